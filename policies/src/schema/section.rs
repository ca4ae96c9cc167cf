//! What a policy section is: the trait each section file implements, so
//! that the engine and the layers handle every section alike.

use super::Table;
use super::decision::{Approve, RuleRef};
use super::diag::Diagnostic;
use super::probe::ProbeArgs;
use super::rate::Rate;
use super::read::{Parser, Value};
use super::request::Action;

/// One top-level section of a policy (`[tokens]`, `[ssh]`, ...), as read
/// from one source or merged from several.
pub(crate) trait PolicySection: Default + Sized {
    /// Which section this is.
    const NAME: nexus_protocol::Section;
    /// Its tables and their declared keys.
    const TABLES: &'static [Table];
    /// Reads the section's value (the whole `[NAME]` table) into `p.out`.
    fn parse(p: &mut Parser<'_, '_, Self>, value: &Value<'_>);
    /// Adds the rules of a later source.
    fn append(&mut self, other: Self);
    /// Adds another layer's deny rules, after this one's: a deny applies in
    /// every layer.
    fn add_denies_from(&mut self, other: &Self);
    /// Warnings about rules that never fire or never allow.
    fn cross_check(&self) -> Vec<Diagnostic> {
        Vec::new()
    }
    /// The rules of this section, a user layer's, that reach past
    /// `ceiling`, the same section of an org baseline layer (`capped`: the
    /// baseline has allow rules in it), each with why. By default none do:
    /// the ceiling still applies when deciding.
    fn beyond<'a>(&'a self, ceiling: &Self, capped: bool) -> Vec<(&'a RuleRef, String)> {
        let _ = (ceiling, capped);
        Vec::new()
    }
    /// The action a `policy explain` or `policy test` probe of this
    /// section asks for, decided by `decide`. `layers`: this section in
    /// each layer that decides the probe (SSH takes a pinned host key from
    /// them).
    ///
    /// # Errors
    /// A message naming what is missing or wrong in the probe.
    fn probe<T>(
        args: &ProbeArgs<'_>,
        layers: &[&Self],
        decide: impl FnOnce(Action<'_>) -> T,
    ) -> Result<T, String>;
}

/// The rate, approval and rule that come with a grant.
pub(crate) struct Terms<'a> {
    /// The rule's rate limit, if any.
    pub rate: Option<Rate>,
    /// Whether the laptop user approves each use.
    pub approve: Option<Approve>,
    /// The granting rule.
    pub rule: &'a RuleRef,
}

/// What an allowing rule of a section hands the laptop.
pub(crate) trait SectionGrant {
    /// Its rate, approval and rule.
    fn terms(&self) -> Terms<'_>;
    /// Narrows this grant (the user's) under `ceiling`, the same kind of
    /// grant from another allowing layer; `org`: that layer is the org
    /// baseline's. By default a ceiling narrows nothing beyond allowing.
    fn cap(&mut self, ceiling: &Self, org: bool) {
        let _ = (ceiling, org);
    }
}
