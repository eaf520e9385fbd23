"""Deploy stage: one model through sources → quantize → build → runners, as a :class:`Deployment`."""
