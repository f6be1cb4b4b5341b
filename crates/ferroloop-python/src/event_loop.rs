//! `_Loop`: the native half of `ferroloop.Loop` (the Python subclass adds the
//! slow-path API: exception handler, executors, async generators, the
//! `run_until_complete` wrapper).
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

use ferroloop_core::{clock, scheduler::poll_timeout, Injector, Reactor, ReadyQueue, TimerHeap};
use pyo3::exceptions::{PyOSError, PyRuntimeError, PyTypeError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use crate::future::{self, Future, TaskStepMethWrapper, TaskWakeup};
use crate::gc::Adopted;
use crate::handle::{self, report_callback_error, Handle, TimerEntry, TimerHandle};
use crate::util::{extract_stack, imports, in_context, is_exit_exception};

/// A unit of work in the ready queue.
pub enum Ready {
    /// A `Handle` from `call_soon` / a due timer.
    Handle(Py<Handle>),
    /// A future's done callback `func(fut)` in `ctx`.
    FutCallback {
        func: Py<PyAny>,
        fut: Py<PyAny>,
        ctx: Adopted,
    },
    /// `task.__step(exc)` in the task's context.
    Step {
        task: Py<Future>,
        exc: Option<Py<PyAny>>,
    },
    /// `task.__wakeup(fut)` in the task's context.
    Wakeup { task: Py<Future>, fut: Py<PyAny> },
}

fn closed_error() -> PyErr {
    PyRuntimeError::new_err("Event loop is closed")
}

#[pyclass(module = "ferroloop._ferroloop", name = "_Loop", subclass, weakref)]
pub struct Loop {
    pub(crate) ready: ReadyQueue<Ready>,
    pub(crate) timers: TimerHeap<TimerEntry>,
    reactor: Option<Reactor>,
    injector: Arc<Injector<Ready>>,
    stopping: bool,
    closed: bool,
    running: bool,
    pub(crate) debug: bool,
    slow_callback_duration: f64,
    resolution: f64,
    task_factory: Option<Py<PyAny>>,
    native_tasks: bool,
}

impl Loop {
    /// Queues `item` (the loop's `call_soon` for internal work).
    pub(crate) fn push_ready(slf: &Bound<'_, Loop>, item: Ready) -> PyResult<()> {
        let mut s = slf
            .try_borrow_mut()
            .map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
        if s.closed {
            return Err(closed_error());
        }
        if !s.debug {
            // Pinning touches only the task (no Python code runs).
            if let Ready::Step { task, .. } = &item {
                future::pin_task(task.bind(slf.py()));
            }
            s.ready.push(item);
            return Ok(());
        }
        drop(s);
        let h = Loop::item_to_handle(slf, item)?;
        slf.borrow_mut().ready.push(Ready::Handle(h));
        Ok(())
    }

    /// Wraps a lightweight item into an asyncio-style `Handle` (debug mode
    /// and error reports).
    fn item_to_handle(slf: &Bound<'_, Loop>, item: Ready) -> PyResult<Py<Handle>> {
        let py = slf.py();
        let lp = slf.clone().into_any().unbind();
        let debug = slf.borrow().debug;
        let tb = if debug {
            Some(extract_stack(py)?)
        } else {
            None
        };
        let (cb, args, ctx): (Py<PyAny>, Py<PyTuple>, Adopted) = match item {
            Ready::Handle(h) => return Ok(h),
            Ready::FutCallback { func, fut, ctx } => (func, PyTuple::new(py, [fut])?.unbind(), ctx),
            Ready::Step { task, exc } => {
                let ctx = Adopted::shared(task_context(py, &task));
                (
                    Py::new(py, TaskStepMethWrapper { task, exc })?.into_any(),
                    PyTuple::empty(py).unbind(),
                    ctx,
                )
            }
            Ready::Wakeup { task, fut } => {
                let ctx = Adopted::shared(task_context(py, &task));
                (
                    Py::new(py, TaskWakeup { task })?.into_any(),
                    PyTuple::new(py, [fut])?.unbind(),
                    ctx,
                )
            }
        };
        Py::new(py, Handle::new(cb, args, lp, ctx, tb))
    }

    fn check_closed(&self) -> PyResult<()> {
        if self.closed {
            Err(closed_error())
        } else {
            Ok(())
        }
    }

    /// One iteration (asyncio's `_run_once`).
    fn run_once(slf: &Bound<'_, Loop>) -> PyResult<()> {
        let py = slf.py();
        let mut purged: Vec<TimerEntry> = Vec::new();
        let (timeout, reactor) = {
            let mut s = slf.borrow_mut();
            s.timers.purge_cancelled(|e| purged.push(e));
            let busy = !s.ready.is_empty() || s.stopping;
            let deadline = s.timers.next_deadline();
            // Read the clock only when the timeout depends on it.
            let now = if busy || deadline.is_none() {
                0.0
            } else {
                clock::monotonic()
            };
            let timeout = poll_timeout(busy, deadline, now);
            let idle_poll = timeout == Some(Duration::ZERO)
                && s.reactor.as_ref().is_some_and(|r| r.source_count() == 0)
                && !s.injector.is_notified();
            (timeout, if idle_poll { None } else { s.reactor.take() })
        };
        for e in &purged {
            handle::unpin(e.base.bind(py).as_any());
        }
        drop(purged);
        if let Some(mut reactor) = reactor {
            let polled = if timeout == Some(Duration::ZERO) {
                reactor.poll(timeout, |_| {})
            } else {
                py.check_signals()
                    .inspect_err(|_| slf.borrow_mut().reactor = None)?;
                py.detach(|| reactor.poll(timeout, |_| {}))
            };
            slf.borrow_mut().reactor = Some(reactor);
            let polled = polled.map_err(|e| PyOSError::new_err(e.to_string()))?;
            if polled.interrupted {
                py.check_signals()?;
            }
        }
        let ntodo = {
            let mut s = slf.borrow_mut();
            let s = &mut *s;
            for item in s.injector.drain_if_notified() {
                s.ready.push(item);
            }
            if !s.timers.is_empty() {
                let end = clock::monotonic() + s.resolution;
                let ready = &mut s.ready;
                s.timers.pop_due(end, |e| ready.push(Ready::Handle(e.base)));
            }
            s.ready.begin_batch()
        };
        for _ in 0..ntodo {
            let item = match slf.borrow_mut().ready.pop() {
                Some(i) => i,
                None => break,
            };
            Loop::run_item(slf, item)?;
        }
        Ok(())
    }

    fn run_item(slf: &Bound<'_, Loop>, item: Ready) -> PyResult<()> {
        let py = slf.py();
        let lp = slf.as_any();
        match item {
            Ready::Handle(h) => {
                let h = h.into_bound(py);
                handle::unpin(h.as_any());
                if h.get().is_cancelled() {
                    return Ok(());
                }
                if slf.borrow().debug {
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
                let t = task.bind(py);
                let ctx = task_context(py, &task);
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
            Ready::Wakeup { task, fut } => {
                let t = task.bind(py);
                let ctx = task_context(py, &task);
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
                let h = Loop::item_to_handle(slf, rebuild())?.into_bound(py);
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
        if dt >= slf.borrow().slow_callback_duration {
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
            let s = slf.borrow();
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
        let mut s = slf.borrow_mut();
        if !s.debug {
            handle::pin(h.bind(py).as_any());
        }
        s.ready.push(Ready::Handle(h.clone_ref(py)));
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

fn task_context(py: Python<'_>, task: &Py<Future>) -> Py<PyAny> {
    task.bind(py)
        .borrow()
        .task
        .as_ref()
        .map(|t| t.context.inner().clone_ref(py))
        .expect("Ready::Step/Wakeup hold tasks")
}

#[pymethods]
impl Loop {
    #[new]
    #[pyo3(signature = (*_args, **_kwargs))]
    fn py_new(_args: &Bound<'_, PyTuple>, _kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        let reactor = Reactor::new().map_err(|e| PyOSError::new_err(e.to_string()))?;
        let injector = Arc::new(Injector::new(reactor.waker()));
        Ok(Loop {
            ready: ReadyQueue::new(),
            timers: TimerHeap::new(),
            reactor: Some(reactor),
            injector,
            stopping: false,
            closed: false,
            running: false,
            debug: false,
            slow_callback_duration: 0.1,
            resolution: clock::resolution(),
            task_factory: None,
            native_tasks: true,
        })
    }

    fn time(&self) -> f64 {
        clock::monotonic()
    }

    #[getter]
    fn _clock_resolution(&self) -> f64 {
        self.resolution
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
        let injector = {
            let s = slf.borrow();
            if !s.debug {
                handle::pin(h.bind(py).as_any());
            }
            Arc::clone(&s.injector)
        };
        injector
            .push(Ready::Handle(h.clone_ref(py)))
            .map_err(|e| PyOSError::new_err(e.to_string()))?;
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

    fn _timer_handle_cancelled(&mut self, handle: &Bound<'_, PyAny>) {
        let _ = handle;
        self.timers.note_cancelled();
    }

    fn stop(&mut self) {
        self.stopping = true;
    }

    #[getter]
    fn _stopping(&self) -> bool {
        self.stopping
    }

    fn is_running(&self) -> bool {
        self.running
    }

    fn is_closed(&self) -> bool {
        self.closed
    }

    fn _check_closed(&self) -> PyResult<()> {
        self.check_closed()
    }

    fn get_debug(&self) -> bool {
        self.debug
    }

    fn _set_debug_flag(&mut self, enabled: bool) {
        self.debug = enabled;
    }

    #[getter]
    fn get_slow_callback_duration(&self) -> f64 {
        self.slow_callback_duration
    }

    #[setter]
    fn set_slow_callback_duration(&mut self, v: f64) {
        self.slow_callback_duration = v;
    }

    #[getter]
    fn get__native_tasks(&self) -> bool {
        self.native_tasks
    }

    #[setter]
    fn set__native_tasks(&mut self, v: bool) {
        self.native_tasks = v;
    }

    fn create_future(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let (native, debug) = {
            let s = slf.borrow();
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
            let s = slf.borrow();
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

    fn set_task_factory(&mut self, factory: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        let factory = factory.filter(|f| !f.is_none());
        if let Some(f) = &factory {
            if !f.is_callable() {
                return Err(PyTypeError::new_err(
                    "task factory must be a callable or None",
                ));
            }
        }
        self.task_factory = factory.map(|f| f.unbind());
        Ok(())
    }

    fn get_task_factory(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.task_factory.as_ref().map(|f| f.clone_ref(py))
    }

    /// Runs iterations until `stop()`; the Python `run_forever` wraps this
    /// with the running-loop bookkeeping.
    fn _run(slf: &Bound<'_, Self>) -> PyResult<()> {
        {
            let mut s = slf.borrow_mut();
            s.check_closed()?;
            if s.running {
                return Err(PyRuntimeError::new_err(
                    "This event loop is already running",
                ));
            }
            s.running = true;
        }
        let result = loop {
            if let Err(e) = Loop::run_once(slf) {
                break Err(e);
            }
            if slf.borrow().stopping {
                break Ok(());
            }
        };
        let mut s = slf.borrow_mut();
        s.stopping = false;
        s.running = false;
        result
    }

    /// Marks the loop closed and drops pending work (the Python `close`
    /// adds executor shutdown).
    fn _close(slf: &Bound<'_, Self>) -> PyResult<()> {
        let (ready, timers, injected) = {
            let mut s = slf.borrow_mut();
            if s.running {
                return Err(PyRuntimeError::new_err("Cannot close a running event loop"));
            }
            if s.closed {
                return Ok(());
            }
            s.closed = true;
            let ready: Vec<Ready> = s.ready.drain().collect();
            let timers = s.timers.clear();
            let injected = s.injector.drain();
            (ready, timers, injected)
        };
        let py = slf.py();
        for item in ready.iter().chain(injected.iter()) {
            match item {
                Ready::Handle(h) => handle::unpin(h.bind(py).as_any()),
                Ready::Step { task, .. } => future::unpin_task(task.bind(py)),
                Ready::FutCallback { .. } | Ready::Wakeup { .. } => {}
            }
        }
        for e in &timers {
            handle::unpin(e.base.bind(py).as_any());
        }
        drop((ready, timers, injected));
        Ok(())
    }

    /// Number of callbacks waiting in the ready queue.
    fn _ready_count(&self) -> usize {
        self.ready.len()
    }

    /// Number of entries in the timer heap (cancelled ones included).
    fn _timer_count(&self) -> usize {
        self.timers.len()
    }

    fn _write_to_self(&self) -> PyResult<()> {
        self.injector
            .wake()
            .map_err(|e| PyOSError::new_err(e.to_string()))
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
        let mut s = slf.borrow_mut();
        if !s.debug {
            handle::pin(th.as_any());
        }
        s.timers.push(when, entry);
        drop(s);
        Ok(th.unbind())
    }
}
