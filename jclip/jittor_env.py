"""Safe Jittor defaults, applied before Jittor is first imported.

Plain ``import jittor`` fails on two kinds of machines that jclip users have:
one with ``nvcc`` on PATH but no GPU or CUDA runtime (Jittor tries to build
CUDA kernels), and one without internet (Jittor downloads oneDNN 2.2 on first
import).  We only set an option when the user has not set it themselves, so an
explicit ``nvcc_path=...``, ``use_mkl=...`` or ``log_silent=...`` in the
environment always wins.

Jittor's own info and warning lines (``[i 1123 ...] Found nvcc ...``) are
kept out of a user's terminal (``log_silent=1``) unless ``JCLIP_VERBOSE=1``
or ``set_verbose()`` (no command has a flag for it).
"""
import glob
import os
import platform
import sys
import warnings

# Where Jittor looks for its own oneDNN; a folder with lib/libmkldnn.so there
# stops it from downloading one.
_JT_MKL_DIR = os.path.join(os.path.expanduser("~"), ".cache", "jittor", "mkl")
_JT_MKL_HOME = os.path.join(_JT_MKL_DIR, "dnnl_lnx_2.2.0_cpu_gomp")
_SYSTEM_LIB_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu",
                    "/usr/lib64", "/usr/lib", "/usr/local/lib")
_SYSTEM_INCLUDE_DIRS = ("/usr/include", "/usr/local/include")

ONEDNN_HINT = ("install oneDNN (Debian/Ubuntu: `apt-get install libdnnl-dev`) "
               "and jclip will find it; without it Jittor's CPU kernels are "
               "about 50x slower")


def has_gpu():
    """True when an NVIDIA driver is loaded (a GPU is usable, not just nvcc)."""
    return os.path.exists("/proc/driver/nvidia/version") or \
        os.path.exists("/dev/nvidiactl")


def _jittor_onednn_ready():
    return any(os.path.isfile(os.path.join(d, "lib", "libmkldnn.so"))
               for d in glob.glob(os.path.join(_JT_MKL_DIR, "dnnl*")))


def find_system_onednn():
    """(include_dir, libdnnl.so) of an installed oneDNN, or None."""
    lib = next((p for d in _SYSTEM_LIB_DIRS
                for p in [os.path.join(d, "libdnnl.so")] if os.path.isfile(p)),
               None)
    inc = next((d for d in _SYSTEM_INCLUDE_DIRS
                if os.path.isfile(os.path.join(d, "dnnl.hpp"))), None)
    return (inc, lib) if lib and inc else None


def _link_system_onednn(inc, lib):
    """Lay a system oneDNN out the way Jittor 1.3 expects its own download.

    Jittor's ``mkl_include_path``/``mkl_lib_path`` variables are broken in
    1.3.11, so we build ``~/.cache/jittor/mkl/dnnl_lnx_2.2.0_cpu_gomp`` from
    symlinks instead: include/ holds the dnnl headers, lib/libmkldnn.so points
    at libdnnl.so (the API Jittor's ops use is unchanged since oneDNN 2.0).
    """
    tmp = _JT_MKL_HOME + f".tmp{os.getpid()}"
    os.makedirs(os.path.join(tmp, "include"), exist_ok=True)
    os.makedirs(os.path.join(tmp, "lib"), exist_ok=True)
    for h in glob.glob(os.path.join(inc, "dnnl*")) + \
            glob.glob(os.path.join(inc, "oneapi")):
        os.symlink(h, os.path.join(tmp, "include", os.path.basename(h)))
    os.symlink(lib, os.path.join(tmp, "lib", "libmkldnn.so"))
    try:
        os.rename(tmp, _JT_MKL_HOME)
    except OSError:  # another process won the race: theirs is identical
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)


VERBOSE_ENV = "JCLIP_VERBOSE"
_quieted = []      # [True] once configure() itself set log_silent


def verbose() -> bool:
    """True when the user asked for Jittor's own log lines (JCLIP_VERBOSE=1)."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _quiet_jittor_logs() -> None:
    if verbose() or "log_silent" in os.environ:
        return                              # the user's choice wins
    os.environ["log_silent"] = "1"          # read by Jittor when it starts
    _quieted.append(True)


def set_verbose(on: bool = True) -> None:
    """For a command's ``--verbose``: show (or hide) Jittor's log lines.

    Works before and after Jittor is imported; a ``log_silent`` the user set
    in the environment is left alone.
    """
    os.environ[VERBOSE_ENV] = "1" if on else "0"
    if on and _quieted:
        os.environ.pop("log_silent", None)
        _quieted.clear()
    elif not on:
        _quiet_jittor_logs()
    jt = sys.modules.get("jittor")
    if jt is not None and (_quieted or on):
        jt.flags.log_silent = int(not on)


def restore_python_signals() -> None:
    """Give SIGINT and SIGCHLD back to Python after Jittor's library claimed them.

    Loading Jittor installs C handlers that end the process at once: SIGINT
    ("quick exit": no KeyboardInterrupt, so no ``finally`` and no removal of
    jclip's temporary files) and SIGCHLD whenever any child dies of a signal
    ("Maybe out of memory ... quick exit": a subprocess killed by SIGKILL or
    a crashed image decoder would take jclip with it, silently, exit 1).
    Python's own handlers (or whatever the program set through ``signal``)
    are put back; Jittor's crash handlers (SIGSEGV, SIGBUS ...) stay.  Only
    the main thread may set handlers; elsewhere this does nothing.
    """
    import signal
    import threading
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGINT, getattr(signal, "SIGCHLD", None)):
        if sig is not None:
            handler = signal.getsignal(sig)      # what Python believes is installed
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)


class _AfterJittorImport:
    """A meta-path finder that runs ``restore_python_signals`` right after the
    module ``jittor`` has executed (jclip imports Jittor lazily, from many
    modules; this is the one place that sees it happen).  Removes itself."""

    def find_spec(self, name, path=None, target=None):
        if name != "jittor":
            return None
        sys.meta_path.remove(self)
        import importlib.util
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            restore_python_signals()
        spec.loader.exec_module = exec_module
        return spec


def _watch_jittor_import() -> None:
    if "jittor" in sys.modules:
        restore_python_signals()
    elif not any(isinstance(f, _AfterJittorImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterJittorImport())


def configure():
    """Set nvcc_path / use_mkl / cache_name / log_silent in os.environ unless the
    user already did; have Python's SIGINT/SIGCHLD handling survive ``import jittor``."""
    _watch_jittor_import()
    # Jittor names its compile cache after `git branch` run in its own folder;
    # inside a checkout (a .venv in the repo) that is the repo's branch, so the
    # cache would be rebuilt per branch.  One fixed name keeps it warm.
    os.environ.setdefault("cache_name", "default")
    _quiet_jittor_logs()
    if "nvcc_path" not in os.environ and not has_gpu():
        # nvcc without a driver: Jittor would compile CUDA code that cannot run
        os.environ["nvcc_path"] = ""
    if "use_mkl" in os.environ or platform.system() != "Linux":
        return
    if _jittor_onednn_ready():
        return
    found = find_system_onednn()
    if found:
        try:
            _link_system_onednn(*found)
            return
        except OSError as e:
            reason = f"could not link it into {_JT_MKL_DIR}: {e}"
    else:
        reason = "no oneDNN found"
    os.environ["use_mkl"] = "0"
    warnings.warn(f"jclip: oneDNN disabled ({reason}); {ONEDNN_HINT}.",
                  RuntimeWarning, stacklevel=3)
