//! The start of most system tests: an underlay fabric of cells, the control plane's
//! namespace on it (at `10.254.250.254`), a scratch directory and a test CA; then the
//! control plane and netagent on each cell, as a test asks for them.

use crate::cell::{CellAgent, CellOptions};
use crate::control_plane::ControlPlane;
use crate::lab::{Fabric, Netns, attach, eventually, fabric, vtep_routes};
use crate::scratch::TempDir;

pub struct World {
    pub fabric: Fabric,
    pub ctl: Netns,
    pub dir: TempDir,
    pub ca: testkit::pki::TestCa,
}

impl World {
    /// `cells` cells on a fabric, the control plane's namespace, a CA; nothing running yet.
    pub fn new(cells: usize, name: &str) -> World {
        let fabric = fabric(cells);
        let ctl = Netns::new("ctl");
        attach(&fabric.switch, &ctl, 254);
        let dir = TempDir::new(name);
        let ca = testkit::pki::TestCa::new(dir.path(), "ca");
        World { fabric, ctl, dir, ca }
    }

    /// Cell `i` (1-based, as on the fabric).
    pub fn cell(&self, i: u8) -> &Netns {
        &self.fabric.cells[usize::from(i) - 1]
    }

    pub fn control_plane(&self) -> ControlPlane {
        ControlPlane::start(&self.ctl, &self.ca, self.dir.path()).expect("the control plane starts")
    }

    /// netagent on cell `i`, its state in the scratch directory (the same across restarts).
    pub fn agent(&self, i: u8, cp: &ControlPlane, options: &CellOptions) -> CellAgent {
        let state = self.dir.join(&format!("cell{i}"));
        CellAgent::start(self.cell(i), i, &cp.url(), &self.ca, &state, options).expect("netagent starts")
    }

    /// Waits until every cell has a route to every other.
    pub fn overlay_ready(&self) {
        let others = self.fabric.cells.len() - 1;
        eventually("every cell knows the others", || {
            self.fabric.cells.iter().all(|c| vtep_routes(c, "c2c-vtep") == others)
        });
    }
}
