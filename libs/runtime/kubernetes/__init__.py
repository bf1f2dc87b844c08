"""The kubernetes runtime: manifests (resources.py), the machineType table (machines.py), Pods as
replicas (pods.py) and the adapter (runtime.py)."""
