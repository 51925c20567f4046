"""The suite's own guard: no test's environment variables reach the next
test (or the subprocesses it starts)."""
import os

from conftest import restored_environ


def test_restored_environ_undoes_sets_changes_and_removals():
    os.environ["JCLIP_HYGIENE_KEPT"] = "before"
    try:
        before = dict(os.environ)
        with restored_environ():
            os.environ["JCLIP_HYGIENE_NEW"] = "leak"     # as jittor_env.configure() sets use_mkl=0
            os.environ["JCLIP_HYGIENE_KEPT"] = "changed"
            del os.environ["PATH"]
        assert dict(os.environ) == before
        try:
            with restored_environ():
                os.environ["JCLIP_HYGIENE_NEW"] = "leak"
                raise RuntimeError("test failed half-way")
        except RuntimeError:
            pass
        assert "JCLIP_HYGIENE_NEW" not in os.environ
    finally:
        os.environ.pop("JCLIP_HYGIENE_KEPT", None)
