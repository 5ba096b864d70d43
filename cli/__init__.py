"""The ``resnet-lrp`` command line: a thin click layer over :py:mod:`zennit_resnet_lrp`, installed as
``zennit_resnet_lrp.cli``."""
if __name__ == "cli":  # imported from the repository's top folder rather than as installed
    raise ImportError("the command line installs as zennit_resnet_lrp.cli: import zennit_resnet_lrp.cli")
