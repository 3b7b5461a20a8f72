"""Experiments and graphs of them: what a user builds, runs and resumes.

Above the running layer (:mod:`crystallize.running`), which they call to run, and below folder
configs (:mod:`crystallize.config`), which build them; ``from_yaml`` reaches the latter through
the loaders registered in :mod:`._folders`.
"""

from ._experiment import Experiment, ExperimentGraph
from ._folders import FolderLoaders, register_folder_loaders

__all__ = ["Experiment", "ExperimentGraph", "FolderLoaders", "register_folder_loaders"]
