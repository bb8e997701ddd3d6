//! The one lock buddyslab uses on its allocation paths.
//!
//! `std::sync::Mutex` may allocate on some platforms and is not something a
//! `fork` child can reset, so the allocator has its own: a three-state futex
//! mutex (0 unlocked, 1 locked, 2 locked with waiters), which spins briefly
//! before sleeping in the kernel. It is `const`-constructible, so every lock
//! lives in a `static` and works before any initialisation has run.
//!
//! `fork` support: the atfork *prepare* handler takes every allocator lock in
//! the global lock order with [`Mutex::lock_for_fork`], and the *parent* and
//! *child* handlers release them with [`Mutex::unlock_after_fork`]. In the
//! child only the forking thread exists, so a lock another thread held is
//! not a concern: prepare made sure no other thread holds any.

use crate::os;
use core::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicU32, Ordering};

const UNLOCKED: u32 = 0;
const LOCKED: u32 = 1;
const CONTENDED: u32 = 2;

/// A futex mutex guarding a `T`.
pub struct Mutex<T> {
    state: AtomicU32,
    value: UnsafeCell<T>,
}

// SAFETY: access to `value` is serialised by `state`.
unsafe impl<T: Send> Sync for Mutex<T> {}
// SAFETY: moving the mutex moves the value; T: Send makes that fine.
unsafe impl<T: Send> Send for Mutex<T> {}

impl<T> Mutex<T> {
    /// An unlocked mutex holding `value`.
    pub const fn new(value: T) -> Self {
        Mutex { state: AtomicU32::new(UNLOCKED), value: UnsafeCell::new(value) }
    }

    /// Takes the lock, sleeping while another thread holds it.
    #[inline]
    pub fn lock(&self) -> MutexGuard<'_, T> {
        if self
            .state
            .compare_exchange(UNLOCKED, LOCKED, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            self.lock_contended();
        }
        MutexGuard { mutex: self }
    }

    /// Takes the lock if it is free.
    #[inline]
    pub fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
        self.state
            .compare_exchange(UNLOCKED, LOCKED, Ordering::Acquire, Ordering::Relaxed)
            .ok()
            .map(|_| MutexGuard { mutex: self })
    }

    #[cold]
    #[inline(never)]
    #[link_section = ".text.hot.buddyslab"]
    fn lock_contended(&self) {
        for _ in 0..100 {
            core::hint::spin_loop();
            if self.state.load(Ordering::Relaxed) == UNLOCKED
                && self
                    .state
                    .compare_exchange(UNLOCKED, LOCKED, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                return;
            }
        }
        // Drepper's "futexes are tricky" mutex 2: mark contended, then sleep.
        while self.state.swap(CONTENDED, Ordering::Acquire) != UNLOCKED {
            os::futex_wait(&self.state, CONTENDED);
        }
    }

    #[inline]
    fn unlock(&self) {
        if self.state.swap(UNLOCKED, Ordering::Release) == CONTENDED {
            os::futex_wake_one(&self.state);
        }
    }

    /// Takes the lock and leaves it held with no guard: for the atfork
    /// prepare handler, which releases it with [`Mutex::unlock_after_fork`].
    pub fn lock_for_fork(&self) {
        core::mem::forget(self.lock());
    }

    /// Releases a lock taken by [`Mutex::lock_for_fork`]. In a fork child the
    /// state is simply reset: no other thread exists to wake.
    ///
    /// # Safety
    /// The lock was taken by `lock_for_fork` in this thread (or, in the
    /// child, in the parent thread that forked) and no guard for it exists.
    pub unsafe fn unlock_after_fork(&self, in_child: bool) {
        if in_child {
            self.state.store(UNLOCKED, Ordering::Release);
        } else {
            self.unlock();
        }
    }

    /// The protected value without locking.
    ///
    /// # Safety
    /// The caller holds the lock through other means (e.g. inside the fork
    /// window) or no other thread can reach the value.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn get_unlocked(&self) -> &mut T {
        // SAFETY: exclusivity is the caller's promise.
        unsafe { &mut *self.value.get() }
    }

    /// Whether the lock is held by anyone (for assertions).
    pub fn is_locked(&self) -> bool {
        self.state.load(Ordering::Relaxed) != UNLOCKED
    }
}

/// Proof of holding a [`Mutex`]; releases it on drop.
pub struct MutexGuard<'a, T> {
    mutex: &'a Mutex<T>,
}

impl<T> Deref for MutexGuard<'_, T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: the guard's existence means this thread holds the lock.
        unsafe { &*self.mutex.value.get() }
    }
}

impl<T> DerefMut for MutexGuard<'_, T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the guard's existence means this thread holds the lock.
        unsafe { &mut *self.mutex.value.get() }
    }
}

impl<T> Drop for MutexGuard<'_, T> {
    #[inline]
    fn drop(&mut self) {
        self.mutex.unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_under_contention() {
        static M: Mutex<u64> = Mutex::new(0);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(|| {
                    for _ in 0..50_000 {
                        *M.lock() += 1;
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(*M.lock(), 200_000);
    }

    #[test]
    fn try_lock_fails_while_held_and_fork_helpers_release() {
        let m = Mutex::new(1u8);
        let g = m.lock();
        assert!(m.try_lock().is_none());
        drop(g);
        m.lock_for_fork();
        assert!(m.is_locked());
        // SAFETY: taken by lock_for_fork just above, no guard exists.
        unsafe { m.unlock_after_fork(false) };
        assert!(m.try_lock().is_some());
        m.lock_for_fork();
        // SAFETY: as above; `in_child` only changes how the state is reset.
        unsafe { m.unlock_after_fork(true) };
        assert!(!m.is_locked());
    }
}
