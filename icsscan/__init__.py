"""icsscan: anomaly screening for image folders by deep one-class classification with intra-class splitting.

Library use (scikit-learn style)::

    from icsscan import ICSDetector
    det = ICSDetector(seed=0).fit("good_parts/")
    scores = det.score_samples("incoming/")   # in [0, 1], higher = more abnormal
    det.save("icsscan-model")

Heavy modules (torch) load lazily so that `icsscan scan` starts without torch.
"""
__version__ = "0.1.0"

__all__ = ["ICSDetector", "ICSConfig", "preset_config", "scan_folder", "__version__"]


def __getattr__(name):
    if name == "ICSDetector":
        from .detector import ICSDetector

        return ICSDetector
    if name in ("ICSConfig", "preset_config"):
        from . import config

        return getattr(config, name)
    if name == "scan_folder":
        from .scan import scan_folder

        return scan_folder
    raise AttributeError(f"module 'icsscan' has no attribute {name!r}")
