"""Leaves of the package: nothing here imports from `mitigate` outside `mitigate.core`."""
