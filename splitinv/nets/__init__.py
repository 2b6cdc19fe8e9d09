"""Network architectures that splitinv defines itself: published papers' victims and inverse networks.

torchvision and timm provide the ImageNet classifiers; what a paper trained that neither library has lives
here, one module per paper (:mod:`splitinv.nets.he2019`), registered as victims in :mod:`splitinv.victims`.
"""
