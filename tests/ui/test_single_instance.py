"""One window per user: a second `infini-reader FILE` hands its file to the running window (which
reads it) and exits; a socket left behind by a killed window does not stop the next one."""

import os
import signal
import subprocess
import sys
import textwrap
import time

from infini_reader.app.ui.main import bring_forward
from infini_reader.app.ui.single_instance import InstanceServer, hand_over, server_name

from .conftest import make_epub
from .test_main_window import WAIT, open_window, rows, wait_ready


def test_a_second_start_hands_its_file_to_the_running_window(qtbot, tmp_path, tiny_reader):
    window = open_window(qtbot, tmp_path, tiny_reader)
    server = InstanceServer(parent=window)
    assert server.name == server_name() and server.listen()
    server.files.connect(lambda files: bring_forward(window, files))
    window.showMinimized()
    book = make_epub(tmp_path / "keeper.epub")

    # the second start: a real process, `infini-reader FILE` as the desktop's "Open with" runs it
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    second = subprocess.Popen([sys.executable, "-m", "infini_reader.app.ui.main", str(book)], env=env,
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        qtbot.waitUntil(lambda: second.poll() is not None, timeout=WAIT)  # the window answers meanwhile
    finally:
        if second.poll() is None:
            second.kill()
    out, err = second.communicate()
    assert second.returncode == 0, err
    assert "1 file handed to the window already open" in err and "Traceback" not in err
    wait_ready(qtbot, window, "The Lighthouse Keeper")  # queued and read by the running window
    assert not window.isMinimized()
    assert rows(window)["The Lighthouse Keeper"].path == str(book.resolve())

    server.close()


def test_hand_over_needs_the_window_to_answer(qtbot, tmp_path):
    got = []
    server = InstanceServer(name=f"infini-reader-test-{os.getpid()}")
    assert server.listen()
    server.files.connect(got.append)
    # the client in a process of its own, the server here: the server answers from the event loop
    client = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        from PySide6.QtCore import QCoreApplication
        from infini_reader.app.ui.single_instance import hand_over
        app = QCoreApplication([])
        sys.exit(0 if hand_over(["a.epub", "{tmp_path}/b.pdf"], {server.name!r}) else 3)
        """)], cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    qtbot.waitUntil(lambda: client.poll() is not None, timeout=WAIT)
    assert client.returncode == 0, client.stderr.read()
    assert got == [[str(tmp_path / "a.epub"), str(tmp_path / "b.pdf")]]  # absolute: the window's folder differs
    server.close()
    assert hand_over(["a.epub"], server.name, timeout_ms=500) is False  # nobody listens: start a window


def test_a_socket_left_by_a_killed_window_is_replaced(qtbot, tmp_path):
    name = f"infini-reader-test-killed-{os.getpid()}"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from PySide6.QtCore import QCoreApplication
        from PySide6.QtNetwork import QLocalServer
        app = QCoreApplication([])
        s = QLocalServer()
        assert s.listen({name!r})
        print("listening", flush=True)
        time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "listening"
        taken = InstanceServer(name=name)
        assert not taken.listen()  # a live window holds the name (it would be handed the files)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    fresh = InstanceServer(name=name)
    t0 = time.monotonic()
    assert fresh.listen() and time.monotonic() - t0 < 5  # the dead socket is noticed and replaced
    fresh.close()
