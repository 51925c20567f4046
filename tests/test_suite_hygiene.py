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


class _Item:
    def __init__(self, nodeid):
        self.nodeid = nodeid


def test_shuffle_keeps_each_file_together_and_replays_from_its_seed():
    from conftest import shuffled
    items = [_Item(f"tests/test_{f}.py::test_{i}") for f in "abcd" for i in range(6)]
    order = shuffled(items, 11, "module")
    assert sorted(i.nodeid for i in order) == sorted(i.nodeid for i in items)     # a permutation
    files = [i.nodeid.split("::")[0] for i in order]
    runs = [f for k, f in enumerate(files) if k == 0 or files[k - 1] != f]
    assert len(runs) == 4                                                          # each file in one run
    assert [i.nodeid for i in shuffled(items, 11, "module")] == [i.nodeid for i in order]
    draws = {tuple(i.nodeid for i in shuffled(items, seed, "module")) for seed in range(8)}
    assert len(draws) == 8 and tuple(i.nodeid for i in items) not in draws
    mixed = [i.nodeid.split("::")[0] for i in shuffled(items, 11, "global")]
    assert sorted(mixed) == sorted(files) and len([f for k, f in enumerate(mixed)
                                                   if k == 0 or mixed[k - 1] != f]) > 4
