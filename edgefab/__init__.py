"""edgefab: turn a task and a device budget into a verified on-device runtime package."""

__version__ = "0.1.0"
