"""The Dagster code location: composes everything under ``defs/`` (one asset graph per dataset
YAML of the datasets folder, through the component in ``defs/datasets/defs.yaml``)."""

from pathlib import Path

import dagster as dg

import mm_platform.defs


@dg.definitions
def defs() -> dg.Definitions:
    # What dg.load_from_defs_folder does, minus finding the project through pyproject.toml's
    # [tool.dg]: an installed package (the container image) has no pyproject.toml above it.
    tree = dg.ComponentTree.from_module(defs_module=mm_platform.defs, project_root=Path(__file__).parent.parent)
    return tree.build_defs()
