"""Operations on a model: building it offline, its heads (known and inferred), freezing, the one
reference (what a builder's ``num_classes`` changes), and the per-session model cache."""
