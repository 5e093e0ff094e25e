"""A site's studies from its PACS and predictions back to it: the site's PACS file (``config``),
DICOMweb (``dicomweb``) and DIMSE (``dimse``) transports, the local copy (``cache``), ``pull`` and
``push``. The PACS address and credentials stay at the site; an experiment file never names them."""

from fedseg.data.pacs.config import Case, PacsConfig, PacsError, PacsUnavailable, load_config
from fedseg.data.pacs.pull import PullSummary, pull
from fedseg.data.pacs.push import PushSummary, push

__all__ = ["Case", "PacsConfig", "PacsError", "PacsUnavailable", "PullSummary", "PushSummary", "load_config",
           "pull", "push"]
