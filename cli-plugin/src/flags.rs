//! Flag values shared by the commands and the `c2c-apply` file: ports and protocols, with
//! the cf CLI's messages.

use crate::errors::CommandError;

/// `--port`: `N` or `N-M`; range checks are the server's.
pub fn parse_port(v: &str) -> Result<(i32, i32), CommandError> {
    let positive = || CommandError::FlagUsage("PORT must be a positive integer".into());
    let parts: Vec<&str> = v.split('-').collect();
    let num = |s: &str| s.parse::<i32>().ok().filter(|n| *n >= 0).ok_or_else(positive);
    match parts.as_slice() {
        [one] => num(one).map(|p| (p, p)),
        [a, b] => Ok((num(a)?, num(b)?)),
        _ if parts.first().is_some_and(|p| p.is_empty()) => Err(positive()),
        _ => Err(CommandError::FlagUsage("PORT syntax must match integer[-integer]".into())),
    }
}

pub fn parse_protocol(v: &str) -> Result<String, CommandError> {
    let p = v.to_ascii_lowercase();
    if p == "tcp" || p == "udp" {
        Ok(p)
    } else {
        Err(CommandError::FlagUsage("PROTOCOL must be \"tcp\" or \"udp\"".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports() {
        assert_eq!(parse_port("8080").unwrap(), (8080, 8080));
        assert_eq!(parse_port("8080-8090").unwrap(), (8080, 8090));
        assert_eq!(parse_port("8090-8080").unwrap(), (8090, 8080), "order is the server's to check");
        assert_eq!(parse_port("0").unwrap(), (0, 0));
        for bad in ["x", "-1", "-1-1", "1-fooo"] {
            assert_eq!(
                parse_port(bad).unwrap_err().to_string(),
                "Incorrect Usage: PORT must be a positive integer",
                "{bad}"
            );
        }
        assert_eq!(
            parse_port("1-2-3").unwrap_err().to_string(),
            "Incorrect Usage: PORT syntax must match integer[-integer]"
        );
    }
}
