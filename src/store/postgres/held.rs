//! A pooled connection held by one call. It goes back to the pool only when the call says it is
//! done with the connection idle ([`Held::release`]); dropped any other way (the call's deadline
//! fired with a request in flight, the connection failed, the statement was refused in a way that
//! says the server is no longer the primary) it is closed and left out of the pool. Otherwise a
//! later call could be handed a connection with someone else's COMMIT still waiting on it.

use std::ops::{Deref, DerefMut};

use deadpool_postgres::{Object, Pool, PoolError};

pub struct Held {
    object: Option<Object>,
}

impl Held {
    pub async fn get(pool: &Pool) -> Result<Self, PoolError> {
        Ok(Self {
            object: Some(pool.get().await?),
        })
    }

    /// The call is done and nothing is in flight: the connection may serve the next call.
    pub fn release(mut self) {
        // Dropping the object itself returns it to the pool.
        drop(self.object.take());
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(object) = self.object.take() {
            // Detached from the pool; dropping the client aborts its connection task, which
            // closes the socket.
            drop(Object::take(object));
        }
    }
}

impl Deref for Held {
    type Target = Object;

    fn deref(&self) -> &Object {
        self.object.as_ref().expect("held until released or dropped")
    }
}

impl DerefMut for Held {
    fn deref_mut(&mut self) -> &mut Object {
        self.object.as_mut().expect("held until released or dropped")
    }
}
