"""The version of this build; the .deb and DeviceInfo both read it from here."""

__version__ = "0.1.0"
