"""The machineType table: what a spec's `resources.machineType` / `resources.gpuType` asks of a node.

Kubernetes has no notion of a "machine type"; a cluster says what a node is through labels. berth maps
each name to a node selector (by default the `nvidia.com/gpu.product` label that NVIDIA's GPU Feature
Discovery puts on GPU nodes) and a default GPU count. An operator replaces or extends the table with a
YAML/JSON file (`BERTH_KUBERNETES_MACHINE_TYPES=/etc/berth/machine-types.yaml`), e.g. to use a cloud's
own label (`cloud.google.com/gke-accelerator: nvidia-tesla-t4`) or to add CPU-only machine types.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"


class MachineType(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    nodeSelector: dict[str, str] = Field(default_factory=dict)
    gpuCount: Annotated[int, Field(ge=0)] = 0  # used when the spec does not set resources.gpuCount


MachineTable = dict[str, MachineType]

# GPU Feature Discovery's product names for the console's GPUs and seeds/000's `A100-80G`.
DEFAULT_MACHINE_TYPES: MachineTable = {
    "T4": MachineType(nodeSelector={GPU_PRODUCT_LABEL: "Tesla-T4"}, gpuCount=1),
    "V100": MachineType(nodeSelector={GPU_PRODUCT_LABEL: "Tesla-V100-SXM2-16GB"}, gpuCount=1),
    "A100": MachineType(nodeSelector={GPU_PRODUCT_LABEL: "NVIDIA-A100-SXM4-40GB"}, gpuCount=1),
    "A100-80G": MachineType(nodeSelector={GPU_PRODUCT_LABEL: "NVIDIA-A100-SXM4-80GB"}, gpuCount=1),
}

_TABLE = TypeAdapter(MachineTable)


def load_machine_types(path: Path | None) -> MachineTable:
    """The default table, with the entries of the operator's file (if any) added or replacing."""
    if path is None:
        return dict(DEFAULT_MACHINE_TYPES)
    return {**DEFAULT_MACHINE_TYPES, **_TABLE.validate_python(yaml.safe_load(path.read_text()) or {})}
