"""``gpuconform doctor``: what a machine lacks before a run, one line per prerequisite, per driver.

``run_doctor`` gathers the host's ground truth (``hostfacts``), then runs each requested driver's
checks (``engines``, ``cdi_lint``, ``cluster``, ``vm``) and returns a ``DoctorReport`` whose
``exit_code`` is 0 only when every requested driver is ready.
"""

from __future__ import annotations

from gpuconform.conformance.doctor.model import Check, DoctorReport, DriverReport, Status
from gpuconform.conformance.doctor.runner import DoctorOptions, run_doctor

__all__ = ["Check", "DoctorOptions", "DoctorReport", "DriverReport", "Status", "run_doctor"]
