//! Every synchronisation primitive the engine uses, from one place.
//!
//! In every build these are parking_lot's locks and std's atomics and threads. When the crate is
//! compiled by the `schedules` package (`schedules/`, which sets the cfg `sessiondb_shuttle`),
//! they are [shuttle](https://github.com/awslabs/shuttle)'s, behind the same API: each lock,
//! wait, notification, atomic access, spawn and park is then a point where shuttle's scheduler
//! chooses which thread runs next, so a test explores the interleavings of the engine's real
//! protocols (docs/testing.md, "Schedules"). Nothing else in the crate may take a lock, wait,
//! spawn a thread or park one except through this module; counters that no decision reads stay
//! plain std atomics.

#[cfg(not(sessiondb_shuttle))]
mod imp {
    pub(crate) use parking_lot::{Condvar, Mutex, MutexGuard, RwLock};
    pub(crate) use std::sync::atomic::{AtomicBool, AtomicU64};

    /// Threads.
    pub(crate) mod thread {
        pub(crate) use std::thread::{current, park, Builder, JoinHandle, Thread};
    }
}

#[cfg(sessiondb_shuttle)]
mod imp {
    //! shuttle's primitives with parking_lot's API: no poisoning, and a condition variable
    //! waits on a `&mut` guard.

    use std::ops::{Deref, DerefMut};
    use std::sync::PoisonError;
    use std::time::Duration;

    pub(crate) use shuttle::sync::atomic::{AtomicBool, AtomicU64};

    /// Threads.
    pub(crate) mod thread {
        pub(crate) use shuttle::thread::{current, park, Builder, JoinHandle, Thread};
    }

    #[derive(Debug, Default)]
    pub(crate) struct Mutex<T>(shuttle::sync::Mutex<T>);

    impl<T> Mutex<T> {
        pub(crate) fn new(t: T) -> Mutex<T> {
            Mutex(shuttle::sync::Mutex::new(t))
        }

        pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
            MutexGuard(Some(self.0.lock().unwrap_or_else(PoisonError::into_inner)))
        }
    }

    /// Always `Some` but while a condition variable waits with it.
    pub(crate) struct MutexGuard<'a, T>(Option<shuttle::sync::MutexGuard<'a, T>>);

    impl<T> Deref for MutexGuard<'_, T> {
        type Target = T;
        fn deref(&self) -> &T {
            self.0.as_deref().expect("guard held")
        }
    }

    impl<T> DerefMut for MutexGuard<'_, T> {
        fn deref_mut(&mut self) -> &mut T {
            self.0.as_deref_mut().expect("guard held")
        }
    }

    #[derive(Debug, Default)]
    pub(crate) struct Condvar(shuttle::sync::Condvar);

    impl Condvar {
        pub(crate) fn new() -> Condvar {
            Condvar(shuttle::sync::Condvar::new())
        }

        pub(crate) fn wait<T>(&self, guard: &mut MutexGuard<'_, T>) {
            let g = guard.0.take().expect("guard held");
            guard.0 = Some(self.0.wait(g).unwrap_or_else(PoisonError::into_inner));
        }

        /// shuttle does not model time: this wait ends only when notified, never by its
        /// timeout. Work that runs on a timer in a real build (the sweeper, interval syncs) is
        /// driven by the test instead.
        pub(crate) fn wait_for<T>(&self, guard: &mut MutexGuard<'_, T>, _timeout: Duration) {
            self.wait(guard);
        }

        pub(crate) fn notify_all(&self) {
            self.0.notify_all();
        }
    }

    #[derive(Debug, Default)]
    pub(crate) struct RwLock<T>(shuttle::sync::RwLock<T>);

    impl<T> RwLock<T> {
        pub(crate) fn new(t: T) -> RwLock<T> {
            RwLock(shuttle::sync::RwLock::new(t))
        }

        pub(crate) fn read(&self) -> shuttle::sync::RwLockReadGuard<'_, T> {
            self.0.read().unwrap_or_else(PoisonError::into_inner)
        }

        pub(crate) fn write(&self) -> shuttle::sync::RwLockWriteGuard<'_, T> {
            self.0.write().unwrap_or_else(PoisonError::into_inner)
        }
    }
}

pub(crate) use imp::*;
