"""Loading a model through the repository API answers the same over HTTP and gRPC."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest
from tritonclient.grpc import service_pb2 as pb

from service.grpc.servicer import Servicer
from tests.service.conftest import make_client
from tests.service.test_model import flatten_model

KEY = "k3y"
AUTH = {"x-api-key": KEY}


class _Aborted(Exception):
    pass


class _Context:
    """What the servicer uses of a ``grpc.aio.ServicerContext``: call metadata and abort."""

    code: grpc.StatusCode | None = None

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("x-api-key", KEY),)

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.code = code
        raise _Aborted(details)


@pytest.fixture
def fallback_repo(tmp_path: Path) -> Path:
    """Model ``flat``: version 1 good, version 2 a corrupt model.onnx."""
    model_dir = flatten_model(tmp_path / "repo", tmp_path)
    flatten_model(tmp_path / "repo", tmp_path)
    (model_dir / "2" / "model.onnx").write_bytes(b"not an onnx file")
    return tmp_path / "repo"


def test_a_load_that_falls_back_to_an_older_version_succeeds_over_grpc_as_over_http(fallback_repo: Path) -> None:
    """Issue 20, defect 1: gRPC answered INVALID_ARGUMENT because the entry had a reason (the fallback note)."""
    with make_client(fallback_repo, api_key=KEY) as client:
        app: Any = client.app
        servicer = Servicer(app.state.manager, app.state.settings)
        assert client.post("/v2/repository/models/flat/unload", headers=AUTH).status_code == 200
        response = client.post("/v2/repository/models/flat/load", headers=AUTH)
        assert response.status_code == 200, response.text
        assert client.post("/v2/repository/models/flat/unload", headers=AUTH).status_code == 200
        context = _Context()
        request = pb.RepositoryModelLoadRequest(model_name="flat")
        answer = client.portal.call(servicer.RepositoryModelLoad, request, context)  # type: ignore[union-attr]
        assert isinstance(answer, pb.RepositoryModelLoadResponse) and context.code is None
        entry = client.get("/v2/models/flat").json()
        assert entry["versions"] == ["1"]
        index = {r["name"]: r for r in client.post("/v2/repository/index", headers=AUTH).json()}
        assert index["flat"]["state"] == "READY"
        assert "serving version 1 because newer version 2" in index["flat"]["reason"]


def test_a_name_export_could_not_have_written_is_refused(fallback_repo: Path) -> None:
    """The server's name check was a second copy of the rule, whose '$' let a trailing newline through."""
    with make_client(fallback_repo, api_key=KEY) as client:
        response = client.post("/v2/repository/models/flat%0A/load", headers=AUTH)
        assert response.status_code == 400 and response.json()["error"] == "invalid model name 'flat\\n'"


def test_folders_that_are_not_models_are_skipped_with_a_warning_naming_each(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A folder with an invalid model name, or with nothing to serve, never stops the start: the valid model
    serves, and one warning says which folder was skipped and why."""
    repo = tmp_path / "repo"
    flatten_model(repo, tmp_path)
    (repo / "my model").mkdir()
    (repo / "notes").mkdir()
    (repo / ".cache").mkdir()  # hidden: not reported
    with caplog.at_level("WARNING", logger="service.manager"), make_client(repo) as client:
        assert client.get("/v2/models/flat/ready").status_code == 200
    skipped = [r.getMessage() for r in caplog.records if "skipping folder" in r.getMessage()]
    assert len(skipped) == 2, skipped
    assert "'my model': it is not a valid model name" in skipped[0]
    assert "'notes': it holds neither config.pbtxt nor a version folder" in skipped[1]
