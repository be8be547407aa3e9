//! A stored member as the composer sees it.

use herald_store::brand_alerts::Addressee;
use herald_store::members::Member;

use crate::compose::Recipient;

impl From<&Member> for Recipient {
    fn from(member: &Member) -> Self {
        Recipient {
            member_id: member.id.clone(),
            email: member.email.clone(),
            name: member.name.clone(),
            first_name: member.first_name.clone(),
            locale: member.locale.clone(),
            time_zone: member.time_zone.clone(),
            customer_id: member.customer_id.clone(),
        }
    }
}

/// The member a claim was answered with.
pub fn from_claim(member_id: String, member: Addressee) -> Recipient {
    Recipient {
        member_id,
        email: member.email,
        name: member.name,
        first_name: member.first_name,
        locale: member.locale,
        time_zone: member.time_zone,
        customer_id: member.customer_id,
    }
}
