"""Network architectures (one file each), model cards (:mod:`.card`, no PyTorch) and the registry (:mod:`.registry`)."""
