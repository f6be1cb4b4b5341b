"""Synthetic test module for the harness self-test (not part of CPython)."""
import asyncio
import ctypes
import os
import signal
import time
import unittest


def tearDownModule():
    asyncio.set_event_loop_policy(None)


class A_Basic(unittest.TestCase):
    def test_1_pass(self):
        pass

    def test_2_fail(self):
        self.assertEqual(1, 2)

    def test_3_error(self):
        raise KeyError("boom")

    @unittest.skip("because")
    def test_4_skip(self):
        pass

    def test_5_subtest_fail(self):
        for i in range(3):
            with self.subTest(i=i):
                self.assertLess(i, 2)

    @unittest.expectedFailure
    def test_6_xfail(self):
        self.fail("expected")


class B_Hang(unittest.TestCase):
    def test_1_hang(self):
        time.sleep(3600)

    def test_2_hang_with_sigalrm(self):
        # like test_events: the test uses SIGALRM itself, and blocks it
        signal.signal(signal.SIGALRM, lambda *a: None)
        signal.setitimer(signal.ITIMER_REAL, 0.05, 0.05)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        time.sleep(3600)

    def test_3_after_hangs(self):
        pass


class C_Crash(unittest.TestCase):
    def test_1_segfault(self):
        ctypes.string_at(0)

    def test_2_exit(self):
        os._exit(7)

    def test_3_after_crash(self):
        pass


class D_SetUpClassFails(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        raise RuntimeError("setUpClass broke")

    def test_1(self):
        pass

    def test_2(self):
        pass


class E_Loops(unittest.TestCase):
    def test_1_new_event_loop(self):
        loop = asyncio.new_event_loop()
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()

    def test_2_run(self):
        async def main():
            return asyncio.get_running_loop()
        asyncio.run(main())

    def test_3_no_loop(self):
        pass

    def test_4_after_policy_reset(self):
        asyncio.set_event_loop_policy(None)
        loop = asyncio.new_event_loop()
        loop.close()

    def test_5_stdlib_policy(self):
        policy = asyncio.DefaultEventLoopPolicy()
        loop = policy.new_event_loop()
        loop.close()


class F_Isolated(unittest.IsolatedAsyncioTestCase):
    async def test_1(self):
        await asyncio.sleep(0)


class G_TearDownClassFails(unittest.TestCase):
    @classmethod
    def tearDownClass(cls):
        raise RuntimeError("tearDownClass broke")

    def test_1(self):
        pass


class H_Hangs(unittest.TestCase):
    # four hangs in a row: circuit breaker (3) marks the 4th 'notrun'
    def test_1(self):
        time.sleep(3600)

    def test_2(self):
        time.sleep(3600)

    def test_3(self):
        time.sleep(3600)

    def test_4(self):
        time.sleep(3600)


class I_Last(unittest.TestCase):
    def test_1(self):
        pass


class J_SetUpClassSkips(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        raise unittest.SkipTest("class-level skip in setUpClass")

    def test_1(self):
        pass


class K_ForkThenCrash(unittest.TestCase):
    def test_1_forked_grandchild_keeps_pipe(self):
        pid = os.fork()
        if pid == 0:            # grandchild: inherits the events pipe
            time.sleep(30)
            os._exit(0)
        os._exit(3)             # the child dies; the pipe stays open

    def test_2_after(self):
        pass
