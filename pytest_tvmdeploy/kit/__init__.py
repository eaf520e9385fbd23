"""The conformance kit: a catalogue of real models, run through the plugin on your TVM build.

    pytest --pyargs pytest_tvmdeploy.kit --tvm-target=llvm [--tvm-kit-models=default|all|NAME,...]
    python -m pytest_tvmdeploy.kit [pytest options]
"""
