"""The paper's experiments: GLUE (`ina glue`), SQuAD v1/v2 (`ina squad`) and ratio sweeps (`ina sweep`)."""
