"""The progress display of ``fit``: a tqdm bar per epoch (running loss, images/s, elapsed, ETA) and one
line per epoch with its time and throughput.

Where the bar appears:
  - a terminal (stderr is a TTY): a one-line bar that fits the terminal's width (``$COLUMNS`` or the
    terminal's own size), refreshed in place at most 10 times a second; below 70 columns it drops the
    bar graphic and below 50 the elapsed time, so a 40-column terminal still shows the loss, the
    images/s and the ETA on one line;
  - Jupyter, with ipywidgets installed: tqdm's notebook widget (``tqdm.auto`` picks it);
  - anywhere else (a pipe, a log file, CI): no bar at all; the epoch lines alone say how it went.
"""
import shutil
import sys
import time
import warnings

from tqdm import TqdmWarning
from tqdm.std import tqdm as _console_tqdm

# (fewest columns, bar format): tqdm puts ", " before {postfix}, the running loss
FORMATS = [
    (70, "{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"),
    (50, "{desc} {percentage:3.0f}%{postfix}, {rate_fmt}, {elapsed}<{remaining}"),
    (0, "{desc} {percentage:3.0f}%{postfix} {rate_fmt} <{remaining}"),      # 39 characters at most
]


def notebook_tqdm():
    """tqdm's Jupyter widget class when ``tqdm.auto`` picks it (a kernel with ipywidgets), else None.

    Asked only when IPython is already loaded: tqdm.auto and tqdm.notebook import IPython, ~0.15 s that
    ``import gpucnn`` in a terminal or a script should not pay.
    """
    if "IPython" not in sys.modules:
        return None
    with warnings.catch_warnings():      # in a kernel without ipywidgets tqdm.auto warns and falls back
        warnings.simplefilter("ignore", TqdmWarning)
        from tqdm.auto import tqdm as auto
        from tqdm.notebook import tqdm_notebook
    return auto if issubclass(auto, tqdm_notebook) else None


class Progress:
    """One epoch's bar: ``update(done, running_loss)`` after each step, ``close()`` at the end.

    stream: where the bar goes (default sys.stderr, read when the bar is made); initial: images already
    done in this epoch (a resumed run), so the rate counts only this run's.
    """

    def __init__(self, epoch, epochs, total, verbose, stream=None, initial=0):
        self.stream = sys.stderr if stream is None else stream
        self.total, self.done = total, initial
        self.bar, self.decimals = None, 4
        if not verbose:
            return
        widget = notebook_tqdm()
        if widget is not None:
            self.bar = widget(total=total, desc=f"epoch {epoch}/{epochs}", unit="img", unit_scale=True,
                              initial=initial, leave=False)
        elif _isatty(self.stream):
            size = shutil.get_terminal_size((80, 24))
            columns = max(size.columns or 80, 20) - 1     # 0: a pty that reports no size; the last column wraps
            rows = size.lines or 24                       # tqdm hides a bar below the screen's last row
            least, bar_format = next(f for f in FORMATS if columns >= f[0])
            self.decimals = 4 if least else 3
            self.bar = _console_tqdm(
                total=total, desc=f"epoch {epoch}/{epochs}" if least == 70 else f"{epoch}/{epochs}", unit="img",
                unit_scale=True, initial=initial, file=self.stream, ncols=columns, nrows=rows, mininterval=0.1, leave=False,
                bar_format=bar_format)

    @property
    def enabled(self):
        return self.bar is not None

    def update(self, done, running_loss):
        """``done`` images of ``total`` so far in this epoch; ``running_loss`` their mean cost."""
        if self.bar is None:
            return
        self.bar.set_postfix_str(f"loss {running_loss:.{self.decimals}f}", refresh=False)
        self.bar.update(done - self.done)
        self.done = done

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _isatty(stream):
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):      # no isatty, or a closed stream
        return False


class EpochTimer:
    """Wall time and images of one epoch (or of the part of it this process ran, after a resume)."""

    def __init__(self):
        self.start = time.perf_counter()

    def seconds(self):
        """Seconds since the timer started."""
        return max(time.perf_counter() - self.start, 1e-9)

    def describe(self, images, seconds=None):
        """'3.2 s, 1,563 img/s' for ``images`` trained in ``seconds`` (default: since the timer started)."""
        seconds = self.seconds() if seconds is None else seconds
        return f"{_seconds(seconds)}, {images / seconds:,.0f} img/s"


def _seconds(s):
    if s < 10:
        return f"{s:.2f} s"
    if s < 60:
        return f"{s:.1f} s"
    minutes, s = divmod(int(round(s)), 60)
    return f"{minutes} min {s:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"
