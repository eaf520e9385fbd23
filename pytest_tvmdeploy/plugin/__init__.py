"""The pytest plugin: the entry point lists its feature modules, each owning its options, stash
keys and hooks (as pytest's own ``junitxml`` or ``cacheprovider`` do). Everything they call is the
plain-Python API (:func:`~pytest_tvmdeploy.deployment`, :func:`~pytest_tvmdeploy.checks`)."""

# In dependency order: each module imports only those before it (pytest registers them in turn).
pytest_plugins = (
    "pytest_tvmdeploy.plugin.session",     # targets, deploy/tuning/remote options, the marker, header
    "pytest_tvmdeploy.plugin.records",     # one TestRecord per test: table, JUnit, report files
    "pytest_tvmdeploy.plugin.isolation",   # the sandbox worker that runs TVM out of this process
    "pytest_tvmdeploy.plugin.cpp",         # the C++ runner of the session
    "pytest_tvmdeploy.plugin.deployment",  # the tvm_deployment fixture
    "pytest_tvmdeploy.plugin.checking",    # the standard checks, snapshots, reproducers
    "pytest_tvmdeploy.kit.options",        # the conformance kit's own options
    "pytest_tvmdeploy.kit.summary",        # the conformance kit's scoreboard
)
