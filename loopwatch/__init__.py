"""loopwatch: see inside running asyncio programs, in production, in tests and at shutdown."""

from ._awaits import Awaiting as Awaiting
from ._detectors.growth import TaskSnapshot as TaskSnapshot
from ._detectors.growth import TaskStat as TaskStat
from ._detectors.growth import TaskStatDiff as TaskStatDiff
from ._dump import cancel_dump_later as cancel_dump_later
from ._dump import dump as dump
from ._dump import dump_later as dump_later
from ._dump import dump_on_signal as dump_on_signal
from ._exceptions import ConsoleError as ConsoleError
from ._exceptions import LoopLeakError as LoopLeakError
from ._exceptions import LoopwatchError as LoopwatchError
from ._exceptions import NotWatchedError as NotWatchedError
from ._exceptions import OptionsError as OptionsError
from ._frames import Frame as Frame
from ._loops import WatchedEventLoop as WatchedEventLoop
from ._loops import WatchedEventLoopPolicy as WatchedEventLoopPolicy
from ._loops import attach as attach
from ._loops import install as install
from ._loops import loop_factory as loop_factory
from ._loops import run as run
from ._loops import watcher as watcher
from ._options import Options as Options
from ._report import KINDS as KINDS
from ._report import Finding as Finding
from ._report import Report as Report
from ._report import TaskRef as TaskRef
from ._watcher import TaskInfo as TaskInfo
from ._watcher import Watcher as Watcher

__version__ = "0.1.0.dev0"
