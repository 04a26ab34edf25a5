from tests.services.conftest import client, http, server  # noqa: F401  (one tiny-model server per module)
