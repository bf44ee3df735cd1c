"""Training data: readers per data set (one job each), the reference's templates, and the source mixer."""
