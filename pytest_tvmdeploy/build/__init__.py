"""Build stage: compile a Relax module, export the ``.so``, keep it in the artifact cache."""
