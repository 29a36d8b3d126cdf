"""Errors that mean "the user asked for something we cannot do".

`train.py` prints them as one line (`error: <message>`) and exits 1, without a
traceback; everything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A bad flag, config value, dataset or workdir, explained in one sentence."""


class NonFiniteLossError(UserError):
    """Training produced a NaN/Inf loss or gradient and is configured to stop."""


class Preempted(Exception):
    """SIGTERM received: a checkpoint of the agreed step was saved; rerun to go on."""

    def __init__(self, step: int):
        super().__init__(
            f'stopped by SIGTERM at step {step}; a checkpoint of step {step} was '
            'saved, rerun the same command to continue')
        self.step = step
