"""Event loop policy, install(), ferroloop.run() and ``python -m ferroloop``.

Each test is parametrized over the stdlib equivalent ('asyncio') and
ferroloop, so the expectations are checked against stdlib 3.11 too.
"""

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import threading

import pytest
from conftest import require_ferroloop

# ---------------------------------------------------------------------------
# parametrization helpers
# ---------------------------------------------------------------------------

class Flavour:
    """What 'asyncio' or 'ferroloop' provides for policies and runners."""

    def __init__(self, name):
        self.name = name
        if name == 'asyncio':
            self.policy_cls = asyncio.DefaultEventLoopPolicy
            self.loop_cls = asyncio.SelectorEventLoop
            self.task_cls = asyncio.Task
            self.run = asyncio.run
            self.install = lambda: asyncio.set_event_loop_policy(
                asyncio.DefaultEventLoopPolicy())
        else:
            fl = require_ferroloop()
            self.policy_cls = fl.EventLoopPolicy
            self.loop_cls = fl.Loop
            self.task_cls = fl.Task
            self.run = fl.run
            self.install = fl.install


@pytest.fixture(params=['asyncio', 'ferroloop'])
def flavour(request):
    return Flavour(request.param)


def _clean_env(**extra):
    env = dict(os.environ)
    env.pop('PYTHONASYNCIODEBUG', None)
    env.pop('PYTHONDEVMODE', None)
    env.update(extra)
    return env


def _run_py(args, cwd=None, env=None):
    return subprocess.run([sys.executable, *args], cwd=cwd,
                          env=env or _clean_env(), capture_output=True,
                          text=True, timeout=60)


# ---------------------------------------------------------------------------
# the policy
# ---------------------------------------------------------------------------

def test_policy_is_an_event_loop_policy(flavour):
    policy = flavour.policy_cls()
    assert isinstance(policy, asyncio.AbstractEventLoopPolicy)


def test_policy_new_event_loop(flavour):
    policy = flavour.policy_cls()
    a = policy.new_event_loop()
    b = policy.new_event_loop()
    try:
        assert isinstance(a, flavour.loop_cls)
        assert isinstance(a, asyncio.AbstractEventLoop)
        assert a is not b
        assert not a.is_running() and not a.is_closed()
    finally:
        a.close()
        b.close()


def test_policy_get_event_loop_creates_loop_in_main_thread(flavour):
    assert threading.current_thread() is threading.main_thread()
    policy = flavour.policy_cls()
    lp = policy.get_event_loop()
    try:
        assert isinstance(lp, flavour.loop_cls)
        assert policy.get_event_loop() is lp  # created once, then kept
    finally:
        lp.close()
        policy.set_event_loop(None)


def test_policy_set_event_loop(flavour):
    policy = flavour.policy_cls()
    lp = policy.new_event_loop()
    try:
        policy.set_event_loop(lp)
        assert policy.get_event_loop() is lp
        policy.set_event_loop(None)
        # Once set_event_loop() was called, no loop is created implicitly.
        with pytest.raises(RuntimeError,
                           match="There is no current event loop in thread "
                                 "'MainThread'"):
            policy.get_event_loop()
    finally:
        lp.close()


def test_policy_set_event_loop_rejects_non_loop(flavour):
    policy = flavour.policy_cls()
    with pytest.raises(TypeError, match='loop must be an instance of '
                                        'AbstractEventLoop or None'):
        policy.set_event_loop(object())


def test_policy_get_event_loop_in_other_thread(flavour):
    policy = flavour.policy_cls()
    result = []

    def worker():
        try:
            policy.get_event_loop()
        except RuntimeError as exc:
            result.append(str(exc))
        else:
            result.append('no error')

    th = threading.Thread(target=worker, name='worker-thread')
    th.start()
    th.join()
    assert result == ["There is no current event loop in thread "
                      "'worker-thread'."]


def test_policy_loops_are_per_thread(flavour):
    policy = flavour.policy_cls()
    main_loop = policy.new_event_loop()
    seen = []

    def worker():
        lp = policy.new_event_loop()
        policy.set_event_loop(lp)
        seen.append(policy.get_event_loop() is lp)
        lp.close()

    try:
        policy.set_event_loop(main_loop)
        th = threading.Thread(target=worker)
        th.start()
        th.join()
        assert seen == [True]
        assert policy.get_event_loop() is main_loop
    finally:
        main_loop.close()


def test_policy_through_module_functions(flavour):
    asyncio.set_event_loop_policy(flavour.policy_cls())
    lp = asyncio.get_event_loop()
    try:
        assert isinstance(lp, flavour.loop_cls)
        assert asyncio.get_event_loop() is lp
        new = asyncio.new_event_loop()
        assert isinstance(new, flavour.loop_cls)
        new.close()
    finally:
        lp.close()


def test_install(flavour):
    flavour.install()
    assert isinstance(asyncio.get_event_loop_policy(), flavour.policy_cls)
    lp = asyncio.new_event_loop()
    try:
        assert isinstance(lp, flavour.loop_cls)
    finally:
        lp.close()


def test_stdlib_run_after_install(flavour):
    flavour.install()

    async def main():
        return (type(asyncio.get_running_loop()),
                type(asyncio.current_task()),
                type(asyncio.get_running_loop().create_future()))

    loop_type, task_type, fut_type = asyncio.run(main())
    assert issubclass(loop_type, flavour.loop_cls)
    assert task_type is flavour.task_cls
    if flavour.name == 'asyncio':
        assert fut_type is asyncio.Future


# ---------------------------------------------------------------------------
# run()
# ---------------------------------------------------------------------------

def test_run_returns_result(flavour):
    async def main(x):
        await asyncio.sleep(0)
        return x * 2

    assert flavour.run(main(21)) == 42


def test_run_uses_expected_loop_and_closes_it(flavour):
    loops = []

    async def main():
        lp = asyncio.get_running_loop()
        loops.append(lp)
        return type(asyncio.current_task())

    task_type = flavour.run(main())
    assert isinstance(loops[0], flavour.loop_cls)
    assert task_type is flavour.task_cls
    assert loops[0].is_closed()
    assert not loops[0].is_running()


@pytest.mark.parametrize('debug', [True, False, None])
def test_run_debug_flag(flavour, debug, monkeypatch):
    monkeypatch.delenv('PYTHONASYNCIODEBUG', raising=False)
    if sys.flags.dev_mode:
        pytest.skip('-X dev forces debug mode')

    async def main():
        return asyncio.get_running_loop().get_debug()

    assert flavour.run(main(), debug=debug) is bool(debug)


def test_run_propagates_exception(flavour):
    async def main():
        await asyncio.sleep(0)
        raise KeyError('from main')

    with pytest.raises(KeyError, match='from main'):
        flavour.run(main())


def test_run_cancels_leftover_tasks(flavour):
    log = []

    async def background():
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            log.append('cancelled')
            raise

    async def main():
        asyncio.get_running_loop().set_exception_handler(
            lambda lp, ctx: log.append(ctx['message']))
        asyncio.create_task(background())
        await asyncio.sleep(0)
        return 'main done'

    assert flavour.run(main()) == 'main done'
    assert log == ['cancelled']


def test_run_closes_async_generators(flavour):
    log = []
    keep = []

    async def agen():
        try:
            yield 1
            yield 2
        finally:
            log.append('agen closed')

    async def main():
        g = agen()
        await g.__anext__()
        keep.append(g)

    flavour.run(main())
    assert log == ['agen closed']


def test_run_shuts_down_default_executor(flavour):
    threads = []

    async def main():
        lp = asyncio.get_running_loop()
        await lp.run_in_executor(
            None, lambda: threads.append(threading.current_thread()))

    flavour.run(main())
    assert len(threads) == 1
    assert not threads[0].is_alive()


def test_run_rejects_non_coroutine(flavour):
    with pytest.raises(ValueError, match='a coroutine was expected, got 1'):
        flavour.run(1)


def test_run_inside_running_loop(flavour):
    async def inner():
        pass

    async def main():
        coro = inner()
        try:
            with pytest.raises(RuntimeError, match='cannot be called from a '
                                                   'running event loop'):
                flavour.run(coro)
        finally:
            coro.close()
        return 'ok'

    assert flavour.run(main()) == 'ok'


def test_run_twice_in_a_row(flavour):
    async def main(i):
        return i, asyncio.get_running_loop()

    r1, l1 = flavour.run(main(1))
    r2, l2 = flavour.run(main(2))
    assert (r1, r2) == (1, 2)
    assert l1 is not l2
    assert l1.is_closed() and l2.is_closed()


# ---------------------------------------------------------------------------
# PYTHONASYNCIODEBUG
# ---------------------------------------------------------------------------

def test_debug_env_var_makes_new_loops_debug(loop_factory,
                                                      monkeypatch):
    monkeypatch.setenv('PYTHONASYNCIODEBUG', '1')
    lp = loop_factory()
    try:
        assert lp.get_debug() is True
    finally:
        lp.close()
    monkeypatch.delenv('PYTHONASYNCIODEBUG')
    if sys.flags.dev_mode:
        return
    lp = loop_factory()
    try:
        assert lp.get_debug() is False
    finally:
        lp.close()


def test_debug_env_var_in_subprocess(flavour):
    module = 'asyncio' if flavour.name == 'asyncio' else 'ferroloop'
    code = textwrap.dedent(f'''
        import asyncio, {module} as mod
        async def main():
            return asyncio.get_running_loop().get_debug()
        print(mod.run(main()))
    ''')
    on = _run_py(['-c', code], env=_clean_env(PYTHONASYNCIODEBUG='1'))
    assert on.returncode == 0, on.stderr
    assert on.stdout.strip() == 'True'
    off = _run_py(['-c', code])
    assert off.returncode == 0, off.stderr
    assert off.stdout.strip() == 'False'


# ---------------------------------------------------------------------------
# python -m ferroloop script.py
# ---------------------------------------------------------------------------

SCRIPT = '''
import asyncio
import json
import sys

try:
    import ferroloop
except ImportError:
    ferroloop = None


async def main():
    lp = asyncio.get_running_loop()
    return {
        'ferroloop_loop': bool(ferroloop) and isinstance(lp, ferroloop.Loop),
        'loop_module': type(lp).__module__,
    }


info = asyncio.run(main())
info['argv'] = sys.argv
info['name'] = __name__
print(json.dumps(info))
'''


def _launcher(flavour):
    if flavour.name == 'asyncio':
        return []  # plain "python script.py"
    return ['-m', 'ferroloop']


def test_dash_m_runs_script_with_argv(flavour, tmp_path):
    (tmp_path / 'script.py').write_text(SCRIPT)
    proc = _run_py([*_launcher(flavour), 'script.py', 'a', 'b'],
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info['argv'] == ['script.py', 'a', 'b']
    assert info['name'] == '__main__'
    assert info['ferroloop_loop'] is (flavour.name == 'ferroloop')


def test_dash_m_script_can_import_its_siblings(flavour, tmp_path):
    sub = tmp_path / 'pkgdir'
    sub.mkdir()
    (sub / 'sibling_helper.py').write_text('VALUE = 1234\n')
    (sub / 'script.py').write_text(
        'import sibling_helper\nprint(sibling_helper.VALUE)\n')
    proc = _run_py([*_launcher(flavour), os.path.join('pkgdir', 'script.py')],
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == '1234'


def test_dash_m_script_exit_code(flavour, tmp_path):
    (tmp_path / 'script.py').write_text('import sys\nsys.exit(3)\n')
    proc = _run_py([*_launcher(flavour), 'script.py'], cwd=tmp_path)
    assert proc.returncode == 3


def test_dash_m_script_exception(flavour, tmp_path):
    (tmp_path / 'script.py').write_text(
        'def f():\n    raise ValueError("script failed")\nf()\n')
    proc = _run_py([*_launcher(flavour), 'script.py'], cwd=tmp_path)
    assert proc.returncode == 1
    assert 'ValueError: script failed' in proc.stderr
    assert 'Traceback (most recent call last)' in proc.stderr
