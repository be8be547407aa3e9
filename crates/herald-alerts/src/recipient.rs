//! A stored member as the composer sees it.

use herald_store::members::Member;

use crate::compose::Recipient;

pub fn from_member(member: &Member) -> Recipient {
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
