"""A model behind a prediction API: the Open Inference Protocol (KServe v2) REST endpoints that NVIDIA
Triton, KServe and Seldon MLServer speak, with the output defences real APIs apply (labels only,
top-k, rounded probabilities), a rate limit and a batch limit. ``modelprove serve`` is the command;
:mod:`modelprove.access.remote` is the verifier's side."""

from modelprove.serve.app import OutputMode, ServedModel, ServeError, create_app, parse_rate
from modelprove.serve.server import run_server, served_model

__all__ = ["OutputMode", "ServeError", "ServedModel", "create_app", "parse_rate", "run_server", "served_model"]
