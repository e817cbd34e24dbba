"""post_close_call and dropped_callback, on real loops (asyncio and uvloop)."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable
from typing import Any

import pytest

import loopwatch
from loopwatch._detectors.closed import (
    CALL_INS,
    DroppedCallbackDetector,
    PostCloseDetector,
    own_attrs,
)

from ._sites import marked_line, new_loop, of_kind, site_checker
from .conftest import BASE_LOOP


def line_of(marker: str) -> int:
    return marked_line(__file__, marker)


assert_site = site_checker(__file__)










def nothing() -> None:
    pass


# -- post_close_call ---------------------------------------------------------------------


def test_post_close_call_recorded_even_when_the_caller_catches() -> None:
    loop = new_loop()
    w = loopwatch.watcher(loop)
    loop.run_until_complete(asyncio.sleep(0))
    loop.close()
    try:
        loop.call_soon(nothing)  # L:caught
    except RuntimeError as exc:
        assert str(exc) == "Event loop is closed"
    else:
        pytest.fail("the closed loop did not raise")
    (finding,) = of_kind(w, "post_close_call")
    assert_site(finding, "test_post_close_call_recorded_even_when_the_caller_catches", "caught")
    assert finding.details["method"] == "call_soon"
    assert finding.details["thread"] == "MainThread"
    assert finding.details["callback"] == "nothing"
    assert "loop.call_soon(nothing) was called on the closed loop" in finding.message
    assert finding.stacks["call"][-1].line == line_of("caught")


def test_call_soon_threadsafe_from_a_thread_after_close() -> None:
    loop = new_loop()
    w = loopwatch.watcher(loop)
    loop.run_until_complete(asyncio.sleep(0))
    loop.close()
    errors: list[BaseException] = []

    def feeder() -> None:
        try:
            loop.call_soon_threadsafe(nothing)  # L:threadsafe
        except RuntimeError as exc:
            errors.append(exc)

    thread = threading.Thread(target=feeder, name="feeder")
    thread.start()
    thread.join()
    assert len(errors) == 1
    (finding,) = of_kind(w, "post_close_call")
    assert_site(finding, "feeder", "threadsafe")
    assert finding.details["thread"] == "feeder"
    assert "from thread 'feeder'" in finding.message


def test_a_late_callback_after_asyncio_style_run() -> None:
    """The classic: a timer thread fires after loopwatch.run() returned."""
    seen: list[loopwatch.Watcher] = []
    started = threading.Event()
    go = threading.Event()

    async def main() -> asyncio.AbstractEventLoop:
        seen.append(loopwatch.watcher())
        return asyncio.get_running_loop()

    loop = loopwatch.run(main(), loop=BASE_LOOP, log=False)

    def late() -> None:
        started.set()
        go.wait(5)
        try:
            loop.call_soon_threadsafe(print, "too late")  # L:late
        except RuntimeError:
            pass

    thread = threading.Thread(target=late, name="reporter")
    thread.start()
    started.wait(5)
    go.set()
    thread.join()
    (finding,) = of_kind(seen[0], "post_close_call")
    assert_site(finding, "late", "late")
    assert finding.details["thread"] == "reporter"


def test_every_call_in_is_recorded_and_still_raises() -> None:
    loop = new_loop()
    w = loopwatch.watcher(loop)
    loop.close()

    async def work() -> None:
        pass

    calls: dict[str, Callable[[], Any]] = {
        "call_soon": lambda: loop.call_soon(nothing),
        "call_later": lambda: loop.call_later(1, nothing),
        "call_at": lambda: loop.call_at(loop.time() + 1, nothing),
        "run_in_executor": lambda: loop.run_in_executor(None, nothing),
    }
    for call in calls.values():
        with pytest.raises(RuntimeError, match="Event loop is closed"):
            call()
    coro = work()
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        loop.create_task(coro)
    coro.close()
    fut = loop.create_future()  # asyncio does not refuse this one
    assert not fut.done()
    methods = {f.details["method"] for f in of_kind(w, "post_close_call")}
    assert methods == {*calls, "create_task", "create_future"}
    by_method = {f.details["method"]: f for f in of_kind(w, "post_close_call")}
    assert by_method["create_task"].details["callback"].endswith("work")
    assert by_method["create_future"].details["raises"] is False


def test_every_call_in_on_an_attached_asyncio_loop() -> None:
    """A plain asyncio loop (what pytest-asyncio makes for each test) is watched after
    close through ``_check_closed`` and ``create_future`` alone: every call-in is still
    one finding, named as called, at the caller's line."""
    loop = asyncio.new_event_loop()
    w = loopwatch.attach(loop, log=False)
    loop.run_until_complete(asyncio.sleep(0))
    loop.close()
    assert set(vars(loop)) & set(CALL_INS) <= {"call_at", "run_in_executor", "create_future"}
    a, b = socket.socketpair()

    async def work() -> None:
        pass

    coro = work()
    calls: dict[str, Callable[[], Any]] = {
        "call_soon": lambda: loop.call_soon(nothing),  # L:pc-call_soon
        "call_later": lambda: loop.call_later(1, nothing),  # L:pc-call_later
        "call_at": lambda: loop.call_at(loop.time() + 1, nothing),  # L:pc-call_at
        "run_in_executor": lambda: loop.run_in_executor(None, nothing),  # L:pc-run_in_executor
        "create_task": lambda: loop.create_task(coro),  # L:pc-create_task
        "run_until_complete": lambda: loop.run_until_complete(coro),  # L:pc-run_until_complete
        "run_forever": lambda: loop.run_forever(),  # L:pc-run_forever
        "add_reader": lambda: loop.add_reader(a, nothing),  # L:pc-add_reader
        "add_writer": lambda: loop.add_writer(a, nothing),  # L:pc-add_writer
        "add_signal_handler": lambda: loop.add_signal_handler(10, nothing),  # L:pc-add_signal_handler
    }
    try:
        for call in calls.values():
            with pytest.raises(RuntimeError, match="Event loop is closed"):
                call()
    finally:
        coro.close()
        a.close()
        b.close()
    errors: list[BaseException] = []

    def feeder() -> None:
        try:
            loop.call_soon_threadsafe(nothing)  # L:feeder
        except RuntimeError as exc:
            errors.append(exc)

    thread = threading.Thread(target=feeder, name="feeder")
    thread.start()
    thread.join()
    assert len(errors) == 1
    assert not loop.create_future().done()  # L:future
    found = of_kind(w, "post_close_call")
    by_method = {f.details["method"]: f for f in found}
    assert len(found) == len(by_method) == len(calls) + 2  # call_later is not also call_at
    assert set(by_method) == {*calls, "call_soon_threadsafe", "create_future"}
    for method in calls:
        finding = by_method[method]
        assert finding.site is not None and finding.site.line == line_of(f"pc-{method}"), method
        assert finding.details["count"] == 1, method
        assert finding.details["raises"] is True
    for method in ("call_soon", "call_later", "call_at", "run_in_executor", "add_reader",
                   "add_signal_handler"):
        assert by_method[method].details["callback"] == "nothing", method
    assert by_method["create_task"].details["callback"].endswith("work")
    assert "loop.call_later(nothing) was called" in by_method["call_later"].message
    assert_site(by_method["call_soon_threadsafe"], "feeder", "feeder")
    assert by_method["call_soon_threadsafe"].details["thread"] == "feeder"
    assert by_method["create_future"].details["raises"] is False
    assert_site(by_method["create_future"], "test_every_call_in_on_an_attached_asyncio_loop",
                "future")
    w.close()
    assert not set(vars(loop)) & {*CALL_INS, "_check_closed"}
    with pytest.raises(RuntimeError):
        loop.call_soon(nothing)
    assert len(of_kind(w, "post_close_call")) == len(found)


def test_repeated_calls_from_one_line_are_one_finding_with_a_count() -> None:
    loop = new_loop()
    w = loopwatch.watcher(loop)
    loop.close()
    for _ in range(5):
        try:
            loop.call_soon(nothing)  # L:repeat
        except RuntimeError:
            pass
    (finding,) = of_kind(w, "post_close_call")
    assert finding.details["count"] == 5
    assert_site(finding, "test_repeated_calls_from_one_line_are_one_finding_with_a_count",
                "repeat")


def test_no_wrappers_while_the_loop_is_open_and_none_after_watcher_close() -> None:
    loop = new_loop()
    w = loopwatch.watcher(loop)
    # (what loopwatch puts on a watched loop, on the instance or on the loop's own class)
    own = own_attrs(loop)
    assert not any(name in own for name in CALL_INS if name not in ("call_later", "call_at",
                                                                   "run_in_executor"))
    loop.close()
    own = own_attrs(loop)
    assert ("call_soon" in own and "call_soon_threadsafe" in own) or "_check_closed" in own
    w.close()
    own = own_attrs(loop)
    assert not any(name in own for name in (*CALL_INS, "_check_closed"))
    with pytest.raises(RuntimeError):
        loop.call_soon(nothing)
    assert of_kind(w, "post_close_call") == []


def test_an_attached_asyncio_loop_is_switched_to_a_shared_class() -> None:
    # What pytest's loop of each test gets: no wrapper on the loop, two class switches.
    loop = asyncio.new_event_loop()
    plain = type(loop)
    w = loopwatch.attach(loop, log=False)
    opened = type(loop)
    assert opened is not plain and opened.__mro__[1] is plain
    assert opened.__name__ == plain.__name__ and opened.__module__ == plain.__module__
    fresh = asyncio.new_event_loop()
    fresh.close()
    # (executor_thread's wrapper is the one left on the loop itself)
    assert set(vars(loop)) - set(vars(fresh)) <= {"_lw_watcher", "run_in_executor"}
    loop.close()
    closed = type(loop)
    assert closed.__mro__[1] is opened
    # asyncio's call-ins all start with _check_closed: two methods see them all
    assert {"_check_closed", "create_future"} == set(closed.__dict__) & {
        *CALL_INS, "_check_closed"}
    with pytest.raises(RuntimeError):
        loop.call_later(1, nothing)
    (finding,) = of_kind(w, "post_close_call")
    assert finding.details["count"] == 1  # call_later calls call_at: still one call
    w.release()
    assert type(loop) is plain and "_lw_watcher" not in vars(loop)
    with pytest.raises(RuntimeError):
        loop.call_later(1, nothing)
    assert len(of_kind(w, "post_close_call")) == 1
    # a second loop of the class gets the same classes
    other = asyncio.new_event_loop()
    w = loopwatch.attach(other, log=False)
    assert type(other) is opened
    other.close()
    assert type(other) is closed
    w.release()


def test_a_timer_method_hidden_before_attach_gets_a_wrapper_of_its_own() -> None:
    # Something wrapped call_at on the loop before loopwatch attached: the loop still
    # gets the shared class (close and the exception handler are its own), and
    # dropped_callback wraps the loop's call_at instead, around theirs.
    loop = asyncio.new_event_loop()
    plain = type(loop)
    original = loop.call_at

    def theirs(*args: Any, **kwargs: Any) -> Any:
        return original(*args, **kwargs)

    target: Any = loop
    target.call_at = theirs
    w = loopwatch.attach(loop, log=False)
    assert type(loop).__mro__[1] is plain
    assert vars(loop)["call_at"] is not theirs
    loop.call_later(30, nothing)  # L:hidden-timer
    loop.close()
    (finding,) = of_kind(w, "dropped_callback")
    assert_site(finding, "test_a_timer_method_hidden_before_attach_gets_a_wrapper_of_its_own",
                "hidden-timer")
    w.release()
    assert type(loop) is plain and vars(loop)["call_at"] is theirs


def test_the_shared_class_calls_what_the_loops_class_has_now(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The shared class is made once; a method patched on the loop's class afterwards
    # (a test's mock, a library's fix) is still the one a watched loop calls.
    loopwatch.attach(asyncio.new_event_loop(), log=False).loop.close()
    loop = asyncio.new_event_loop()
    seen: list[str] = []
    plain = type(loop)
    monkeypatch.setattr(plain, "call_exception_handler",
                        lambda self, context: seen.append(context["message"]))
    call_at = plain.call_at

    def patched_call_at(self: Any, when: float, cb: Any, *args: Any, context: Any = None) -> Any:
        seen.append("call_at")
        return call_at(self, when, cb, *args, context=context)

    monkeypatch.setattr(plain, "call_at", patched_call_at)
    w = loopwatch.attach(loop, log=False)
    assert type(loop).__mro__[1] is plain
    loop.call_exception_handler({"message": "patched"})
    loop.call_later(10, nothing)
    assert seen == ["patched", "call_at"]
    loop.close()
    w.release()


def test_a_call_in_wrapped_by_something_else_keeps_the_caller_at_close() -> None:
    # Another tool wrapped call_soon on the loop after loopwatch attached: the walk up
    # from _check_closed would stop at that wrapper, so the closed loop gets a wrapper
    # on every call-in instead of the closed class, and the program's line is reported.
    loop = asyncio.new_event_loop()
    w = loopwatch.attach(loop, log=False)
    opened = type(loop)
    original = loop.call_soon

    def theirs(*args: Any, **kwargs: Any) -> Any:
        return original(*args, **kwargs)

    target: Any = loop
    target.call_soon = theirs
    loop.close()
    assert type(loop) is opened
    assert vars(loop)["call_soon"] is not theirs  # wrapped in turn
    with pytest.raises(RuntimeError):
        loop.call_soon(nothing)  # L:foreign
    (finding,) = of_kind(w, "post_close_call")
    assert_site(finding, "test_a_call_in_wrapped_by_something_else_keeps_the_caller_at_close",
                "foreign")
    w.release()
    assert vars(loop)["call_soon"] is theirs


def test_a_loop_whose_methods_are_hidden_gets_wrappers_of_its_own() -> None:
    # Something put the loop's close on the loop itself (another tool's wrapper): the
    # shared class would be hidden, so the wrappers go on the loop, and at close two of
    # them see every call-in. The dropped_callback timer wrapper on call_at is
    # loopwatch's own pass-through: it must not force all twelve.
    loop = asyncio.new_event_loop()
    plain = type(loop)
    target: Any = loop
    target.close = loop.close
    w = loopwatch.attach(loop, log=False)
    assert type(loop) is plain
    assert "call_at" in vars(loop)  # the timer wrapper
    loop.close()
    own = vars(loop)
    assert "_check_closed" in own and "create_future" in own
    assert "call_soon" not in own and "call_soon_threadsafe" not in own
    with pytest.raises(RuntimeError):
        loop.call_later(1, nothing)
    (finding,) = of_kind(w, "post_close_call")
    assert finding.details["count"] == 1  # call_later calls call_at: still one call
    w.release()
    assert set(vars(loop)) & {*CALL_INS, "_check_closed", "_lw_watcher"} == set()


def test_a_failing_detector_is_reported_once_and_only_it_is_switched_off(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: PostCloseDetector, *args: Any) -> None:
        raise ZeroDivisionError("inside loopwatch")

    monkeypatch.setattr(PostCloseDetector, "record", broken)
    loop = new_loop()
    w = loopwatch.watcher(loop)
    loop.call_later(60, nothing)  # L:still-works
    loop.run_until_complete(asyncio.sleep(0))
    loop.close()
    for _ in range(3):
        with pytest.raises(RuntimeError, match="Event loop is closed"):  # not ZeroDivisionError
            loop.call_soon(nothing)
    notes = [n for n in w.all_notes() if "switched off" in n]
    assert len(notes) == 1 and "post_close_call" in notes[0] and "ZeroDivisionError" in notes[0]
    detector = w.detector("post_close_call")
    assert detector is not None and not detector.enabled
    assert all(d.enabled for d in w.detectors if d is not detector)
    (dropped,) = of_kind(w, "dropped_callback")
    assert_site(dropped, "test_a_failing_detector_is_reported_once_and_only_it_is_switched_off",
                "still-works")


# -- dropped_callback ----------------------------------------------------------------------


def test_timers_dropped_at_close_point_at_their_call_later_line() -> None:
    loop = new_loop()
    w = loopwatch.watcher(loop)

    async def schedule() -> None:
        loop = asyncio.get_running_loop()
        for _ in range(3):
            loop.call_later(30, nothing)  # L:call-later
        loop.call_at(loop.time() + 60, print, "never")  # L:call-at
        loop.call_later(0, nothing)  # runs before the loop stops: not dropped
        loop.call_later(30, nothing).cancel()  # cancelled: not dropped
        await asyncio.sleep(0.01)

    loop.run_until_complete(schedule())
    loop.close()
    found = {f.details["method"]: f for f in of_kind(w, "dropped_callback")}
    assert set(found) == {"call_later", "call_at"}
    later, at = found["call_later"], found["call_at"]
    assert_site(later, "schedule", "call-later")
    assert later.details["count"] == 3 and later.details["callback"] == "nothing"
    assert "3 timers nothing() scheduled with loop.call_later()" in later.message
    assert_site(at, "schedule", "call-at")
    assert at.details["count"] == 1 and at.details["callback"] == "print"
    assert 50 < at.details["due_in"][0] <= 60


def test_call_soon_left_in_the_ready_queue() -> None:
    loop = new_loop()
    w = loopwatch.watcher(loop)
    loop.run_until_complete(asyncio.sleep(0))
    loop.call_soon(nothing)
    loop.close()
    found = of_kind(w, "dropped_callback")
    if BASE_LOOP == "uvloop":
        assert found == []
        assert any("call_soon() that had not run" in n and "uvloop" in n for n in w.all_notes())
        return
    (finding,) = found
    assert finding.details["method"] == "call_soon"
    assert finding.site is not None and finding.site.function == "nothing"
    assert "where it was scheduled is unknown" in finding.message


def test_call_soon_site_known_in_debug_mode() -> None:
    if BASE_LOOP == "uvloop":
        pytest.skip("uvloop's ready queue is hidden")
    loop = new_loop()
    loop.set_debug(True)
    w = loopwatch.watcher(loop)
    loop.run_until_complete(asyncio.sleep(0))
    loop.call_soon(nothing)  # L:debug-soon
    loop.close()
    (finding,) = of_kind(w, "dropped_callback")
    assert_site(finding, "test_call_soon_site_known_in_debug_mode", "debug-soon")
    assert finding.stacks["scheduled"][-1].line == line_of("debug-soon")


def test_timers_of_awaits_in_pending_tasks_are_not_dropped_callbacks() -> None:
    """A task asleep at close is a straggler; its sleep timer is not a second finding."""
    loop = new_loop()
    w = loopwatch.watcher(loop)

    async def sleeper() -> None:
        await asyncio.sleep(30)

    async def waiter() -> None:
        await asyncio.wait_for(asyncio.Event().wait(), 30)

    async def main() -> None:
        asyncio.create_task(sleeper())
        asyncio.create_task(waiter())
        await asyncio.sleep(0.01)

    loop.run_until_complete(main())
    loop.close()
    assert of_kind(w, "dropped_callback") == []
    coros = {f.task.coro.rsplit(".", 1)[-1] for f in of_kind(w, "straggler") if f.task}
    assert {"sleeper", "waiter"} <= coros  # (3.10 and 3.11 wait_for add a task of its own)


def test_clean_timers_and_the_watchdog_heartbeat_give_nothing() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        handle = loop.call_later(30, nothing)
        fired = asyncio.Event()
        loop.call_later(0.001, fired.set)
        await fired.wait()
        handle.cancel()
        await asyncio.sleep(0.05)  # a few heartbeats

    seen: list[loopwatch.Watcher] = []

    async def outer() -> None:
        seen.append(loopwatch.watcher())
        await main()

    loopwatch.run(outer(), loop=BASE_LOOP, log=False, heartbeat=0.005)
    assert of_kind(seen[0], "dropped_callback") == []
    assert of_kind(seen[0], "post_close_call") == []


def test_a_kept_handle_that_already_ran_is_not_dropped() -> None:
    loop = new_loop()
    w = loopwatch.watcher(loop)
    kept: list[Any] = []

    async def main() -> None:
        ran = asyncio.Event()
        kept.append(asyncio.get_running_loop().call_later(0.001, ran.set))
        await ran.wait()
        await asyncio.sleep(0.01)

    loop.run_until_complete(main())
    loop.close()
    assert kept and of_kind(w, "dropped_callback") == []


def test_many_timers_that_ran_or_were_cancelled_are_forgotten() -> None:
    loop = new_loop()
    w = loopwatch.watcher(loop)
    detector = w.detector("dropped_callback")
    assert isinstance(detector, DroppedCallbackDetector)

    async def churn() -> None:
        loop = asyncio.get_running_loop()
        for n in range(3000):
            loop.call_later(30, nothing).cancel()
            loop.call_later(0.0001, nothing)
            if n % 100 == 0:
                await asyncio.sleep(0.001)
        await asyncio.sleep(0.01)
        loop.call_later(30, nothing)  # L:survivor

    loop.run_until_complete(churn())
    tracked = len(detector._sites) + len(detector._handles)
    assert tracked < 2100  # pruned as it grew, not 6000
    loop.close()
    (finding,) = of_kind(w, "dropped_callback")
    assert_site(finding, "churn", "survivor")
    assert finding.details["count"] == 1


def test_attached_to_a_running_loop() -> None:
    """loopwatch.attach() on a plain loop that is already running: timers made after it
    attached, and calls after close, are seen the same way."""
    if BASE_LOOP == "uvloop":
        import uvloop

        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()

    async def main() -> loopwatch.Watcher:
        w = loopwatch.attach(log=False)
        asyncio.get_running_loop().call_later(30, nothing)  # L:attached-timer
        return w

    w = loop.run_until_complete(main())
    loop.close()
    with pytest.raises(RuntimeError):
        loop.call_soon(nothing)  # L:attached-late
    (dropped,) = of_kind(w, "dropped_callback")
    assert_site(dropped, "main", "attached-timer")
    (late,) = of_kind(w, "post_close_call")
    assert_site(late, "test_attached_to_a_running_loop", "attached-late")
