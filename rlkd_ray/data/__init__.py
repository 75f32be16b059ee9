"""Problems with gold answers and teacher reasoning: built once per data configuration, cached under
`<cache_dir>/data/<name>/<key>/` with splits `train` + the eval splits (`math500`, `gsm8k`, ...)."""

from rlkd_ray.data.errors import BadRow, DataError
from rlkd_ray.data.prepare import PreparedData, load_split, prepare_data
from rlkd_ray.data.sources import EVAL_SPLITS, FEATURES, SOURCE_KINDS, SourceStats, build_source, eval_split

__all__ = [
    "BadRow",
    "DataError",
    "EVAL_SPLITS",
    "FEATURES",
    "PreparedData",
    "SOURCE_KINDS",
    "SourceStats",
    "build_source",
    "eval_split",
    "load_split",
    "prepare_data",
]
