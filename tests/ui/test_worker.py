"""Background work and garbage: cycles are collected on the GUI thread, not in a worker's."""

import gc
import threading
import weakref

from PySide6.QtCore import QObject

from infini_reader.app.ui.worker import GuiThreadCollector, Tasks, collect_garbage_on_gui_thread


class Cycle:
    def __init__(self):
        self.me = self
        self.qt = QObject()  # a Qt object in the garbage, made on the GUI thread


def test_cycles_are_collected_on_the_gui_thread_only(qtbot):
    tasks = Tasks()
    collector = collect_garbage_on_gui_thread()
    assert isinstance(collector, GuiThreadCollector) and collect_garbage_on_gui_thread() is collector
    assert not gc.isenabled()  # no automatic collection in whichever thread allocates
    finalized_in = []
    c = Cycle()
    weakref.finalize(c, lambda: finalized_in.append(threading.current_thread()))
    dead = weakref.ref(c)
    del c
    assert dead() is not None  # a cycle: reference counting alone does not free it

    def allocate():  # a worker that allocates a lot, as reading does
        junk = [[i] for i in range(20 * collector.threshold[0])]
        return len(junk)

    results = []
    tasks.call(allocate, results.append)
    qtbot.waitUntil(lambda: bool(results) and not tasks.busy, timeout=10_000)
    # (the GUI thread's timer may already have collected it while we waited: that is allowed)
    kept = [[i] for i in range(2 * collector.threshold[0])]  # enough for a collection on the timer
    qtbot.waitUntil(lambda: dead() is None, timeout=5_000)
    del kept
    assert finalized_in == [threading.main_thread()]
