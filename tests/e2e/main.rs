//! End-to-end tests: the real server binary, a real HTTP receiver, real HTTP.

mod api;
mod chaos;
mod common;
mod delivery;
mod destinations;
mod durability;
mod engine;
mod fairness;
mod harness;
mod journal;
mod openapi;
mod opevents;
mod otel;
mod outage;
mod portal;
mod postgres;
mod publishmq;
mod queue;
mod redis;
mod scale;
