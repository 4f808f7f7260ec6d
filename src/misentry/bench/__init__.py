"""The benchmark: named presets (:mod:`.presets`) run end to end by :func:`.runner.run_bench`
as resumable content-addressed jobs (:mod:`.jobs`) on an executor, one module per experiment
(:mod:`.experiments`), the result rows (:mod:`.results`, :mod:`.metrics`) and the report rebuilt
from them (:mod:`.report`)."""
