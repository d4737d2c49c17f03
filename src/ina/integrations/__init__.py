"""Other engines that run ina's adapters: each one its own package, importing ina's core only."""
