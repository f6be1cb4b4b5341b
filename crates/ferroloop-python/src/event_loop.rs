//! `_Loop`: the native half of `ferroloop.Loop` (the Python subclass adds the
//! slow-path API: exception handler, executors, async generators, the
//! `run_until_complete` wrapper). This module holds its Python methods and
//! the driver that runs the queues; the struct and its work items are in
//! `crate::loop_state`.
//!
//! ## Invariants
//! - The PyO3 borrow of the loop is held only for queue/heap manipulation,
//!   never while Python code runs and never across the GIL-free poll: the
//!   reactor is moved out of the struct for the poll and put back after.
//! - Items leave the ready queue before they run and are dropped after the
//!   borrow is released (a drop may run `__del__`, which may call the loop).
//! - In debug mode every scheduled item is a real `Handle` (source
//!   tracebacks, slow-callback warnings name it); otherwise futures and
//!   tasks schedule lightweight [`Ready`] items without allocating Handles.

use std::sync::Arc;
use std::time::Duration;

use ferroloop_core::{clock, LoopCore, PollPlan};
use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use crate::aio::{imports, in_context};
use crate::errors::{is_exit_exception, os_error};
use crate::future::{self, task_context, Future};
use crate::handle::{self, report_callback_error, Handle, TimerEntry, TimerHandle};
use crate::io::fd_watch::{self, FdKey};
use crate::io::{sock_ops, stream};
use crate::loop_state::{Loop, LoopState, Ready};

impl Loop {
    /// One iteration: `ferroloop_core::LoopCore`'s phases, with the GIL
    /// released around a blocking poll.
    ///
    /// Signal handlers run before the reactor leaves the core and after it
    /// is back: a Python handler that raises (Ctrl-C's `KeyboardInterrupt`)
    /// can never cost the loop its reactor.
    ///
    /// With `stop_check`, it first returns `Ok(true)` without iterating if
    /// `stop()` was called (during the previous iteration).
    fn run_once(slf: &Bound<'_, Loop>, stop_check: bool) -> PyResult<bool> {
        let py = slf.py();
        let mut purged: Vec<TimerEntry> = Vec::new();
        let on_due = |e: TimerEntry| Some(Ready::Handle(e.base));
        let on_io = |w: &_, ev: &_, ready: &mut _| fd_watch::on_ready(py, w, ev, ready);
        // Most iterations of a busy loop skip the poll: then planning and
        // collecting share one borrow.
        // Watchers dropped from the fd table (cancelled handles) are
        // released after the borrow: dropping them may run Python code.
        let (plan, mut ntodo, unwatched) = {
            let mut s = slf.get().st();
            if stop_check && s.core.stopping {
                return Ok(true);
            }
            let plan = s.core.prepare(|e| purged.push(e));
            let ntodo = (plan == PollPlan::Skip).then(|| s.core.collect(on_io, on_due));
            (plan, ntodo, s.core.take_unwatched())
        };
        drop(unwatched);
        if !purged.is_empty() {
            for e in &purged {
                handle::unpin(e.base.bind(py).as_any());
            }
            drop(purged);
        }
        if ntodo.is_none() {
            let polled = if let PollPlan::Block(timeout) = plan {
                py.check_signals()?;
                let mut poller = slf.get().st().core.take_poller();
                py.detach(|| poller.poll(timeout));
                slf.get().st().core.put_poller(poller)
            } else {
                let mut s = slf.get().st();
                let mut poller = s.core.take_poller();
                poller.poll(Some(Duration::ZERO));
                s.core.put_poller(poller)
            };
            if polled.map_err(os_error)?.interrupted {
                py.check_signals()?;
            }
            let unwatched = {
                let mut s = slf.get().st();
                ntodo = Some(s.core.collect(on_io, on_due));
                s.core.take_unwatched()
            };
            drop(unwatched);
        }
        for _ in 0..ntodo.unwrap_or(0) {
            let (item, debug) = {
                let mut s = slf.get().st();
                match s.core.ready.pop() {
                    Some(i) => (i, s.debug),
                    None => break,
                }
            };
            Loop::run_item(slf, item, debug)?;
        }
        Ok(false)
    }

    fn run_item(slf: &Bound<'_, Loop>, item: Ready, debug: bool) -> PyResult<()> {
        let py = slf.py();
        let lp = slf.as_any();
        match item {
            Ready::Handle(h) => {
                let h = h.into_bound(py);
                handle::unpin(h.as_any());
                if h.get().is_cancelled() {
                    return Ok(());
                }
                if debug {
                    return Loop::run_handle_debug(slf, &h);
                }
                Handle::run(&h)
            }
            Ready::FutCallback { func, fut, ctx } => {
                let func = func.into_bound(py);
                let fut = fut.into_bound(py);
                let r = in_context(ctx.inner().bind(py), || func.call1((&fut,)).map(|_| ()));
                match r {
                    Ok(()) => Ok(()),
                    Err(e) if is_exit_exception(py, &e) => Err(e),
                    Err(e) => {
                        let args = PyTuple::new(py, [&fut])?;
                        let h = Py::new(
                            py,
                            Handle::new(
                                func.clone().unbind(),
                                args.clone().unbind(),
                                lp.clone().unbind(),
                                ctx,
                                None,
                            ),
                        )?;
                        report_callback_error(
                            py,
                            lp,
                            &func,
                            args.as_any(),
                            e,
                            Some(h.bind(py).as_any()),
                            None,
                        )
                    }
                }
            }
            Ready::Step { task, exc } => {
                // SAFETY: Step items hold a native task (`crate::loop_state`).
                let t = unsafe { task.bind(py).cast_unchecked::<Future>() };
                let ctx = task_context(t);
                let r = in_context(ctx.bind(py), || {
                    future::task_step(t, exc.as_ref().map(|e| e.bind(py).clone()))
                });
                let r = Loop::report_item_error(slf, r, || Ready::Step {
                    task: task.clone_ref(py),
                    exc,
                });
                future::unpin_task(t);
                r
            }
            Ready::Stream { stream, write } => {
                if debug {
                    let h = future::item_to_handle(slf, Ready::Stream { stream, write })?;
                    let h = h.into_bound(py);
                    return Loop::run_handle_debug(slf, &h);
                }
                let stream = stream.into_bound(py);
                match stream::run_ready(&stream, write) {
                    Ok(()) => Ok(()),
                    Err(e) if is_exit_exception(py, &e) => Err(e),
                    Err(e) => {
                        // As asyncio's reader/writer Handle would be reported:
                        // named after the transport's method, with a Handle.
                        let cb = crate::io::datagram::ready_callback(&stream, write)?;
                        let args = PyTuple::empty(py);
                        let ctx = stream.call_method1("_context", (write,))?;
                        let ctx = (!ctx.is_none()).then(|| ctx.unbind());
                        let h = Handle::with_defaults(
                            py,
                            cb.clone().unbind(),
                            args.clone().unbind(),
                            lp.clone().unbind(),
                            ctx,
                            false,
                        )?;
                        let h = Bound::new(py, h)?;
                        report_callback_error(py, lp, &cb, args.as_any(), e, Some(h.as_any()), None)
                    }
                }
            }
            Ready::Sock { watch, write } => {
                if debug {
                    let h = future::item_to_handle(slf, Ready::Sock { watch, write })?;
                    return Loop::run_handle_debug(slf, &h.into_bound(py));
                }
                let watch = watch.into_bound(py);
                match sock_ops::run_ready(&watch, slf, write) {
                    Ok(()) => Ok(()),
                    Err(e) if is_exit_exception(py, &e) => Err(e),
                    Err(e) => {
                        let cb = watch.getattr("_retry")?;
                        let args = PyTuple::new(
                            py,
                            [lp.clone(), write.into_pyobject(py)?.to_owned().into_any()],
                        )?;
                        report_callback_error(py, lp, &cb, args.as_any(), e, None, None)
                    }
                }
            }
            Ready::Wakeup { task, fut } => {
                // SAFETY: Wakeup items hold a native task (`crate::loop_state`).
                let t = unsafe { task.bind(py).cast_unchecked::<Future>() };
                let ctx = task_context(t);
                let r = in_context(ctx.bind(py), || future::task_wakeup(t, fut.bind(py)));
                Loop::report_item_error(slf, r, || Ready::Wakeup {
                    task: task.clone_ref(py),
                    fut,
                })
            }
        }
    }

    fn report_item_error(
        slf: &Bound<'_, Loop>,
        r: PyResult<()>,
        rebuild: impl FnOnce() -> Ready,
    ) -> PyResult<()> {
        let py = slf.py();
        match r {
            Ok(()) => Ok(()),
            Err(e) if is_exit_exception(py, &e) => Err(e),
            Err(e) => {
                let h = future::item_to_handle(slf, rebuild())?.into_bound(py);
                let (cb, args) = {
                    let inner = h.get().inner.lock();
                    (
                        inner.callback.as_ref().map(|c| c.clone_ref(py)),
                        inner.args.as_ref().map(|a| a.clone_ref(py)),
                    )
                };
                let cb = cb.unwrap_or_else(|| py.None()).into_bound(py);
                let args = args
                    .map(|a| a.into_bound(py).into_any())
                    .unwrap_or_else(|| PyTuple::empty(py).into_any());
                report_callback_error(py, slf.as_any(), &cb, &args, e, Some(h.as_any()), None)
            }
        }
    }

    fn run_handle_debug(slf: &Bound<'_, Loop>, h: &Bound<'_, Handle>) -> PyResult<()> {
        let py = slf.py();
        slf.setattr(intern!(py, "_current_handle"), h)?;
        let t0 = clock::monotonic();
        let r = Handle::run(h);
        let dt = clock::monotonic() - t0;
        slf.setattr(intern!(py, "_current_handle"), py.None())?;
        r?;
        if dt >= slf.get().st().slow_callback_duration {
            slf.call_method1(intern!(py, "_log_slow_callback"), (h, dt))?;
        }
        Ok(())
    }

    /// Validates a callback like asyncio's `call_soon`/`call_at` and builds
    /// its Handle. `check_thread`: debug mode also checks the calling thread
    /// (every scheduling method but `call_soon_threadsafe`).
    fn make_handle(
        slf: &Bound<'_, Loop>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        context: Option<Bound<'_, PyAny>>,
        method: &str,
        check_thread: bool,
    ) -> PyResult<Handle> {
        let py = slf.py();
        let debug = {
            let s = slf.get().st();
            s.check_closed()?;
            s.debug
        };
        if debug {
            if check_thread {
                slf.call_method1(intern!(py, "_check_thread"), ())?;
            }
            slf.call_method1(intern!(py, "_check_callback"), (callback, method))?;
        } else {
            check_callback_fast(callback, method)?;
        }
        Handle::with_defaults(
            py,
            callback.clone().unbind(),
            args.clone().unbind(),
            slf.clone().into_any().unbind(),
            context.map(Bound::unbind),
            debug,
        )
    }

    /// `call_soon(callback, *args, context=None)`; Python reaches it through
    /// the raw vectorcall method in `crate::fastcall`.
    pub(crate) fn call_soon(
        slf: &Bound<'_, Self>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        context: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<Handle>> {
        let py = slf.py();
        let h = Py::new(
            py,
            Loop::make_handle(slf, callback, args, context, "call_soon", true)?,
        )?;
        let mut s = slf.get().st();
        if !s.debug {
            handle::pin(h.bind(py).as_any());
        }
        s.core.ready.push(Ready::Handle(h.clone_ref(py)));
        Ok(h)
    }
}

/// The cheap part of asyncio's debug-mode `_check_callback`, done always:
/// a coroutine object, or anything not callable, is refused with asyncio's
/// message. (Recognising `async def` functions needs attribute lookups on
/// every call; that part runs in debug mode only, as in asyncio.)
fn check_callback_fast(callback: &Bound<'_, PyAny>, method: &str) -> PyResult<()> {
    // SAFETY: a type check only reads the object's type.
    if unsafe { pyo3::ffi::PyCoro_CheckExact(callback.as_ptr()) } != 0 {
        return Err(PyTypeError::new_err(format!(
            "coroutines cannot be used with {method}()"
        )));
    }
    if !callback.is_callable() {
        return Err(PyTypeError::new_err(format!(
            "a callable object was expected by {}(), got {}",
            method,
            callback.repr()?
        )));
    }
    Ok(())
}

#[pymethods]
impl Loop {
    #[new]
    #[pyo3(signature = (*_args, **_kwargs))]
    fn py_new(_args: &Bound<'_, PyTuple>, _kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        Ok(Loop::new(LoopState {
            core: LoopCore::new().map_err(os_error)?,
            closed: false,
            running: false,
            debug: false,
            slow_callback_duration: 0.1,
            task_factory: None,
            native_tasks: true,
        }))
    }

    fn time(&self) -> f64 {
        clock::monotonic()
    }

    #[getter]
    fn _clock_resolution(&self) -> f64 {
        self.st().core.resolution()
    }

    #[pyo3(signature = (callback, *args, context=None))]
    fn call_soon_threadsafe(
        slf: &Bound<'_, Self>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        context: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<Handle>> {
        let py = slf.py();
        let handle =
            Loop::make_handle(slf, callback, args, context, "call_soon_threadsafe", false)?;
        let h = Py::new(py, handle)?;
        // Python callers hold the GIL, and the loop holds no borrow while
        // Python code runs or while it polls: the handle joins the ready
        // queue directly, in one order with `call_soon` (asyncio appends both
        // to one deque), and the wake-up ends a poll in progress. (The
        // injector serves pushes made without the GIL.)
        let injector = {
            let mut s = slf.get().try_st()?;
            if !s.debug {
                handle::pin(h.bind(py).as_any());
            }
            s.core.ready.push(Ready::Handle(h.clone_ref(py)));
            Arc::clone(s.core.injector())
        };
        injector.wake().map_err(os_error)?;
        Ok(h)
    }

    #[pyo3(signature = (delay, callback, *args, context=None))]
    fn call_later(
        slf: &Bound<'_, Self>,
        delay: &Bound<'_, PyAny>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        context: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<TimerHandle>> {
        if delay.is_none() {
            return Err(PyTypeError::new_err("delay must not be None"));
        }
        let delay: f64 = delay.extract()?;
        Loop::schedule_timer(
            slf,
            clock::monotonic() + delay,
            None,
            callback,
            args,
            context,
            "call_at",
        )
    }

    #[pyo3(signature = (when, callback, *args, context=None))]
    fn call_at(
        slf: &Bound<'_, Self>,
        when: &Bound<'_, PyAny>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        context: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<TimerHandle>> {
        if when.is_none() {
            return Err(PyTypeError::new_err("when cannot be None"));
        }
        let when_f: f64 = when.extract()?;
        let when_obj = if when.is_exact_instance_of::<pyo3::types::PyFloat>() {
            None
        } else {
            Some(when.clone().unbind())
        };
        Loop::schedule_timer(slf, when_f, when_obj, callback, args, context, "call_at")
    }

    /// asyncio's hook for a cancelled `TimerHandle`: counted (it decides
    /// when the heap is compacted) only if the handle is scheduled here.
    /// ferroloop's own TimerHandles count themselves (`crate::handle`).
    fn _timer_handle_cancelled(&self, handle: &Bound<'_, PyAny>) -> PyResult<()> {
        let scheduled = match handle.cast::<TimerHandle>() {
            Ok(th) => th
                .get()
                .scheduled
                .load(std::sync::atomic::Ordering::Relaxed),
            Err(_) => handle
                .getattr(pyo3::intern!(handle.py(), "_scheduled"))?
                .is_truthy()?,
        };
        if scheduled {
            self.st().core.timers.note_cancelled();
        }
        Ok(())
    }

    /// asyncio's `_timer_cancelled_count`: cancelled timers still in the heap.
    #[getter]
    fn _timer_cancelled_count(&self) -> usize {
        self.st().core.timers.cancelled_count()
    }

    fn stop(&self) {
        self.st().core.stopping = true;
    }

    #[getter]
    fn _stopping(&self) -> bool {
        self.st().core.stopping
    }

    fn is_running(&self) -> bool {
        self.st().running
    }

    fn is_closed(&self) -> bool {
        self.st().closed
    }

    fn _check_closed(&self) -> PyResult<()> {
        self.st().check_closed()
    }

    fn get_debug(&self) -> bool {
        self.st().debug
    }

    fn _set_debug_flag(&self, enabled: bool) {
        self.st().debug = enabled;
    }

    #[getter]
    fn get_slow_callback_duration(&self) -> f64 {
        self.st().slow_callback_duration
    }

    #[setter]
    fn set_slow_callback_duration(&self, v: f64) {
        self.st().slow_callback_duration = v;
    }

    #[getter]
    fn get__native_tasks(&self) -> bool {
        self.st().native_tasks
    }

    #[setter]
    fn set__native_tasks(&self, v: bool) {
        self.st().native_tasks = v;
    }

    fn create_future(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let (native, debug) = {
            let s = slf.get().st();
            (s.native_tasks, s.debug)
        };
        if native {
            Ok(Future::create(slf.as_any(), debug)?.into_any().unbind())
        } else {
            let kwargs = PyDict::new(py);
            kwargs.set_item(intern!(py, "loop"), slf)?;
            Ok(imports(py)?
                .aio_future
                .bind(py)
                .call((), Some(&kwargs))?
                .unbind())
        }
    }

    #[pyo3(signature = (coro, *, name=None, context=None))]
    fn create_task(
        slf: &Bound<'_, Self>,
        coro: &Bound<'_, PyAny>,
        name: Option<Bound<'_, PyAny>>,
        context: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let (factory, native) = {
            let s = slf.get().st();
            s.check_closed()?;
            (
                s.task_factory.as_ref().map(|f| f.clone_ref(py)),
                s.native_tasks,
            )
        };
        let context = context.filter(|c| !c.is_none());
        let name = name.filter(|n| !n.is_none());
        if let Some(factory) = factory {
            let task = match &context {
                None => factory.bind(py).call1((slf, coro))?,
                Some(c) => {
                    let kwargs = PyDict::new(py);
                    kwargs.set_item(intern!(py, "context"), c)?;
                    factory.bind(py).call((slf, coro), Some(&kwargs))?
                }
            };
            if let Some(n) = name {
                if let Some(set_name) = task.getattr_opt(intern!(py, "set_name"))? {
                    set_name.call1((n,))?;
                }
            }
            return Ok(task.unbind());
        }
        if native {
            return Ok(
                future::create_task(slf.as_any(), coro, name.as_ref(), context.as_ref())?
                    .into_any()
                    .unbind(),
            );
        }
        let kwargs = PyDict::new(py);
        kwargs.set_item(intern!(py, "loop"), slf)?;
        kwargs.set_item(intern!(py, "name"), name)?;
        kwargs.set_item(intern!(py, "context"), context)?;
        Ok(imports(py)?
            .aio_task
            .bind(py)
            .call((coro,), Some(&kwargs))?
            .unbind())
    }

    fn set_task_factory(&self, factory: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        let factory = factory.filter(|f| !f.is_none());
        if let Some(f) = &factory {
            if !f.is_callable() {
                return Err(PyTypeError::new_err(
                    "task factory must be a callable or None",
                ));
            }
        }
        // The old factory is dropped after the state is released (its
        // `__del__` may call the loop).
        let old = std::mem::replace(&mut self.st().task_factory, factory.map(|f| f.unbind()));
        drop(old);
        Ok(())
    }

    fn get_task_factory(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.st().task_factory.as_ref().map(|f| f.clone_ref(py))
    }

    /// Runs iterations until `stop()`; the Python `run_forever` wraps this
    /// with the running-loop bookkeeping.
    fn _run(slf: &Bound<'_, Self>) -> PyResult<()> {
        {
            let mut s = slf.get().st();
            s.check_closed()?;
            if s.running {
                return Err(PyRuntimeError::new_err(
                    "This event loop is already running",
                ));
            }
            s.running = true;
        }
        // asyncio: `while True: _run_once(); if _stopping: break`. The
        // check is made by the next run_once, in the borrow it takes anyway
        // (nothing runs in between): at least one iteration always runs.
        let mut first = true;
        let result = loop {
            match Loop::run_once(slf, !first) {
                Ok(true) => break Ok(()),
                Ok(false) => first = false,
                Err(e) => break Err(e),
            }
        };
        let mut s = slf.get().st();
        s.core.stopping = false;
        s.running = false;
        result
    }

    /// Marks the loop closed and drops pending work (the Python `close`
    /// adds executor shutdown).
    fn _close(slf: &Bound<'_, Self>) -> PyResult<()> {
        let (ready, timers, injected, watched) = {
            let mut s = slf.get().st();
            if s.running {
                return Err(PyRuntimeError::new_err("Cannot close a running event loop"));
            }
            if s.closed {
                return Ok(());
            }
            s.closed = true;
            let ready: Vec<Ready> = s.core.ready.drain().collect();
            let timers = s.core.timers.clear();
            let injected = s.core.injector().drain();
            let watched = s.core.close();
            (ready, timers, injected, watched)
        };
        let py = slf.py();
        for item in ready.iter().chain(injected.iter()) {
            match item {
                Ready::Handle(h) => handle::unpin(h.bind(py).as_any()),
                Ready::Step { task, .. } => {
                    // SAFETY: Step items hold a native task (`crate::loop_state`).
                    future::unpin_task(unsafe { task.bind(py).cast_unchecked::<Future>() })
                }
                Ready::FutCallback { .. }
                | Ready::Wakeup { .. }
                | Ready::Stream { .. }
                | Ready::Sock { .. } => {}
            }
        }
        for e in &timers {
            handle::unpin(e.base.bind(py).as_any());
        }
        drop((ready, timers, injected, watched));
        Ok(())
    }

    /// Number of callbacks waiting in the ready queue.
    fn _ready_count(&self) -> usize {
        self.st().core.ready.len()
    }

    /// Number of entries in the timer heap (cancelled ones included).
    fn _timer_count(&self) -> usize {
        self.st().core.timers.len()
    }

    /// asyncio's `BaseSelectorEventLoop._add_reader`: `callback(*args)` runs
    /// in every iteration while `fd` is readable; replaces (and cancels) an
    /// earlier reader of `fd`. Returns the new Handle.
    #[pyo3(signature = (fd, callback, *args))]
    fn _add_reader(
        slf: &Bound<'_, Self>,
        fd: &Bound<'_, PyAny>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
    ) -> PyResult<Py<Handle>> {
        Loop::watch_fd(slf, fd, callback, args, true)
    }

    /// The writing twin of `_add_reader`.
    #[pyo3(signature = (fd, callback, *args))]
    fn _add_writer(
        slf: &Bound<'_, Self>,
        fd: &Bound<'_, PyAny>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
    ) -> PyResult<Py<Handle>> {
        Loop::watch_fd(slf, fd, callback, args, false)
    }

    /// asyncio's `_remove_reader`: whether a reader was removed (it is
    /// cancelled). False on a closed loop.
    fn _remove_reader(slf: &Bound<'_, Self>, fd: &Bound<'_, PyAny>) -> PyResult<bool> {
        Loop::unwatch_fd(slf, fd, true)
    }

    /// The writing twin of `_remove_reader`.
    fn _remove_writer(slf: &Bound<'_, Self>, fd: &Bound<'_, PyAny>) -> PyResult<bool> {
        Loop::unwatch_fd(slf, fd, false)
    }

    /// The fd `ferroloop.Loop.run_forever` gives `signal.set_wakeup_fd`:
    /// the write end of the reactor's signal wake-up pipe, so a signal that
    /// arrives just before a blocking poll still ends it
    /// (`ferroloop_core::signal_wake`).
    fn _signal_wakeup_fd(slf: &Bound<'_, Self>) -> PyResult<i32> {
        let s = slf.get().st();
        s.check_closed()?;
        s.core.signal_wake_fd().map_err(os_error)
    }

    /// What a selector's `get_key(fd)` says of a watched fd, as
    /// `(fileobj, fd, events, reader, writer)` (events: 1 read, 2 write);
    /// None when it is not watched. For `ferroloop.Loop._selector`.
    fn _fd_key(slf: &Bound<'_, Self>, fileobj: &Bound<'_, PyAny>) -> PyResult<Option<FdKey>> {
        Loop::fd_key(slf, fileobj)
    }

    /// Number of fds the reactor watches (`add_reader`/`add_writer`).
    fn _io_source_count(&self) -> usize {
        self.st().core.source_count()
    }

    fn _write_to_self(&self) -> PyResult<()> {
        self.st().core.injector().wake().map_err(os_error)
    }
}

impl Loop {
    fn schedule_timer(
        slf: &Bound<'_, Loop>,
        when: f64,
        when_obj: Option<Py<PyAny>>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        context: Option<Bound<'_, PyAny>>,
        method: &str,
    ) -> PyResult<Py<TimerHandle>> {
        let py = slf.py();
        let base = Loop::make_handle(slf, callback, args, context, method, true)?;
        let th = Bound::new(
            py,
            PyClassInitializer::from(base).add_subclass(TimerHandle {
                when,
                when_obj,
                scheduled: std::sync::atomic::AtomicBool::new(true),
            }),
        )?;
        let entry = TimerEntry {
            base: th.as_super().clone().unbind(),
            timer: th.clone().unbind(),
        };
        let mut s = slf.get().st();
        if !s.debug {
            handle::pin(th.as_any());
        }
        s.core.timers.push(when, entry);
        drop(s);
        Ok(th.unbind())
    }
}
