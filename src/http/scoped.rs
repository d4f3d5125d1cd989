//! A service of the project a request acts in. A handler takes
//! `Scoped<Experiments>` (or `Intake`, `Results`, `Webhooks`, `Alerts`,
//! `Live`, `Quotas`) after its role extractor ([`super::auth`]), which found the
//! project's engine: each project's services are its own, so a handler
//! cannot reach another project's data.

use std::future::{ready, Ready};
use std::ops::Deref;
use std::sync::Arc;

use abacus_actors::alerts::Alerts;
use abacus_actors::experiments::Experiments;
use abacus_actors::ingest::Intake;
use abacus_actors::live::Live;
use abacus_actors::quotas::Quotas;
use abacus_actors::results::Results;
use abacus_actors::webhooks::Webhooks;
use abacus_actors::Engine;
use actix_web::{dev::Payload, FromRequest, HttpMessage, HttpRequest};

use super::auth::Acting;
use super::error::ApiError;

/// One of an engine's services.
pub trait Service: Send + Sync + 'static {
    /// The engine's instance.
    fn of(engine: &Engine) -> &Arc<Self>;
}

macro_rules! service {
    ($($ty:ty => $method:ident),* $(,)?) => {$(
        impl Service for $ty {
            fn of(engine: &Engine) -> &Arc<Self> {
                engine.$method()
            }
        }
    )*};
}

service!(
    Experiments => experiments,
    Intake => intake,
    Results => results,
    Webhooks => webhooks,
    Alerts => alerts,
    Live => live,
    Quotas => quotas,
);

/// The acting project's `T`. Extracted after the role extractor (actix
/// runs extractors in argument order); without one, the request is
/// refused rather than served from some other project.
pub struct Scoped<T>(Arc<T>);

impl<T> Scoped<T> {
    /// The shared service.
    pub fn into_inner(self) -> Arc<T> {
        self.0
    }
}

impl<T> Deref for Scoped<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: Service> FromRequest for Scoped<T> {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let acting = req.extensions().get::<Acting>().cloned();
        ready(
            acting
                .map(|Acting(engine)| Scoped(Arc::clone(T::of(&engine))))
                .ok_or(ApiError::Unauthorized),
        )
    }
}
