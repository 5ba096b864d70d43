"""The ``resnet-lrp`` command line: a thin click layer over :py:mod:`zennit_resnet_lrp`."""
