"""Power and thermal telemetry: the device-side sampler, power sources, the cooldown gate and throttle detection.

Everything here is device-independent and pure: it builds POSIX ``sh`` text that a transport runs, and parses the
text that comes back. Nothing in this package talks to a device itself.

* :mod:`farmbench.telemetry.sampler` -- the one sampler script (every transport) and its parser
* :mod:`farmbench.telemetry.power` -- ``[power]`` device table, power sources, window statistics, calibration
* :mod:`farmbench.telemetry.thermal` -- ``[thermal]`` device table, zones, cooldown gate, throttle detection
"""
