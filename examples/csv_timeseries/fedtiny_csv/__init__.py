"""A fedtiny plugin package: a CSV time-series data set (``fedtiny_csv.task.build``) and a small
temporal-convolution backbone (``fedtiny_csv.nets.tcn``), named by ``_target_`` in ``conf/``."""
