"""Measuring tools that write figures into ``docs/``: the CPU benchmark (``carparts benchmark``), the engines'
throughput (``carparts benchmark --engines``), the service load test (``python -m carparts.tools.loadtest``) and
the bundling of a trained run as the default model (``python -m carparts.tools.bundle``). They only import the
library; the library never imports them."""
